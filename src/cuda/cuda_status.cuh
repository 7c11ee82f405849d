// CUDA errors turned into library statuses (the message names the failing call).
#pragma once

#include <cuda_runtime.h>

extern "C" {
#include "errors.h"
}

#define REROPE_CUDA_TRY(call)                                                                        \
    do {                                                                                             \
        const cudaError_t err_ = (call);                                                             \
        if (err_ != cudaSuccess)                                                                     \
            return rerope_fail(GGML_REROPE_ERR_CUDA, "%s: %s (%s)", #call, cudaGetErrorString(err_), \
                               cudaGetErrorName(err_));                                              \
    } while (0)
