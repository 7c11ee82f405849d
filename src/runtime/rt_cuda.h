/* The CUDA calls the runtime needs to order our attention kernel against ggml-cuda's stream
 * without waiting on the host (src/cuda/streams.cu; stubs in src/cuda/cuda_disabled.c).
 * Streams and events are cudaStream_t / cudaEvent_t passed as void *. */
#ifndef GGML_REROPE_RT_CUDA_H
#define GGML_REROPE_RT_CUDA_H

#include "ggml_rerope.h"

#ifdef __cplusplus
extern "C" {
#endif

ggml_rerope_status rt_cuda_stream_new(void ** stream); /* a non-blocking stream on the current device */
void rt_cuda_stream_free(void * stream);
void rt_cuda_stream_idle(void * stream); /* waits for it (NULL: nothing); keeps the error message */
int rt_cuda_event_is_valid(void * event);                       /* 1 if cudaEventQuery accepts it */
ggml_rerope_status rt_cuda_stream_wait(void * stream, void * event); /* stream waits for the event */
ggml_rerope_status rt_cuda_event_record(void * event, void * stream);

#ifdef __cplusplus
}
#endif

#endif
