// Stream and event helpers of the GPU runtime (declared in runtime/rt_cuda.h).
#include <cuda_runtime.h>

extern "C" {
#include "errors.h"
}
#include "rt_cuda.h"

extern "C" {

ggml_rerope_status rt_cuda_stream_new(void ** stream) {
    cudaStream_t s = nullptr;
    const cudaError_t err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (err != cudaSuccess) return rerope_fail(GGML_REROPE_ERR_CUDA, "cudaStreamCreate: %s", cudaGetErrorString(err));
    *stream = s;
    return GGML_REROPE_OK;
}

void rt_cuda_stream_free(void * stream) {
    if (stream) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

void rt_cuda_stream_idle(void * stream) {
    if (stream && cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) != cudaSuccess) cudaGetLastError();
}

int rt_cuda_event_is_valid(void * event) {
    if (!event) return 0;
    const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (err == cudaSuccess || err == cudaErrorNotReady) return 1;
    cudaGetLastError();  // clear it: the caller falls back to waiting on the host
    return 0;
}

ggml_rerope_status rt_cuda_stream_wait(void * stream, void * event) {
    const cudaError_t err = cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0);
    if (err != cudaSuccess)
        return rerope_fail(GGML_REROPE_ERR_CUDA, "cudaStreamWaitEvent: %s", cudaGetErrorString(err));
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_cuda_event_record(void * event, void * stream) {
    const cudaError_t err = cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream));
    if (err != cudaSuccess) return rerope_fail(GGML_REROPE_ERR_CUDA, "cudaEventRecord: %s", cudaGetErrorString(err));
    return GGML_REROPE_OK;
}

}  // extern "C"
