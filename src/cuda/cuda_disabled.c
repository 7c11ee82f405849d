/* Built when GGML_REROPE_CUDA is off: the CUDA entries report that clearly. */
#include "ggml_rerope.h"
#include "check_call.h"
#include "errors.h"
#include "rt_cuda.h"

int ggml_rerope_cuda_available(void) { return 0; }

/* The contract is checked as in a CUDA build (same status and message for bad input); a valid
 * call gets ERR_CUDA, as a CUDA build gets on a machine without a device. */
ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_attn_call * call, void * stream) {
    (void) stream;
    const ggml_rerope_status st = rerope_check_call(call, RR_CHECK_BUFFERS);
    if (st != GGML_REROPE_OK) return st;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}

ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream) {
    (void) stream;
    return rerope_fail(GGML_REROPE_ERR_CUDA, "this build of ggml_rerope has no CUDA kernels (GGML_REROPE_CUDA=OFF)");
}

ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_attn_call * call) {
    const ggml_rerope_status st = rerope_check_call(call, RR_CHECK_BUFFERS | RR_CHECK_POSITIONS);
    if (st != GGML_REROPE_OK) return st;
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
