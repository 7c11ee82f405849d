/* Built when GGML_REROPE_CUDA is off: the CUDA entries report that clearly. */
#include "ggml_rerope.h"
#include "errors.h"
#include "rt_cuda.h"

int ggml_rerope_cuda_available(void) { return 0; }

ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_params * params, const float * q, int32_t n_q,
                                         int32_t n_head, const int32_t * q_pos, const void * k, const void * v,
                                         int32_t kv_type, int32_t n_kv, int32_t n_head_kv, const int32_t * k_pos,
                                         float * out, void * stream) {
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}

ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream) {
    (void) stream;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}

ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_params * params, const float * q, int32_t n_q,
                                                   int32_t n_head, const int32_t * q_pos, const void * k,
                                                   const void * v, int32_t kv_type, int32_t n_kv, int32_t n_head_kv,
                                                   const int32_t * k_pos, float * out) {
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}

/* The runtime's stream helpers (runtime/rt_cuda.h): never reached without a GPU backend. */
ggml_rerope_status rt_cuda_stream_new(void ** stream) {
    *stream = NULL;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}
void rt_cuda_stream_free(void * stream) { (void) stream; }
void rt_cuda_stream_idle(void * stream) { (void) stream; }
int rt_cuda_event_is_valid(void * event) {
    (void) event;
    return 0;
}
ggml_rerope_status rt_cuda_stream_wait(void * stream, void * event) {
    (void) stream, (void) event;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}
ggml_rerope_status rt_cuda_event_record(void * event, void * stream) {
    (void) event, (void) stream;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}
