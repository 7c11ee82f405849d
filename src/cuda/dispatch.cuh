// The one place that turns a call's run-time head size and K/V type into template arguments
// (FlashAttention's static_switch.h). Adding a head size: one line in HEADDIM_SWITCH, and
// MAX_HEAD_DIM (common.cuh) if it is larger.
//
//   return HEADDIM_SWITCH(head_dim, [&] { return launch<kHeadDim>(args, stream); });
//   return KV_TYPE_SWITCH(kv_type, [&] { return launch<kHeadDim, kv_t>(args, stream); });
//
// A value outside the lists returns cudaErrorInvalidValue (the callers validate first).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ggml_rerope.h"

#define HEADDIM_SWITCH(HEAD_DIM, ...)            \
    [&]() -> cudaError_t {                       \
        if ((HEAD_DIM) == 64) {                  \
            constexpr static int kHeadDim = 64;  \
            return __VA_ARGS__();                \
        }                                        \
        if ((HEAD_DIM) == 128) {                 \
            constexpr static int kHeadDim = 128; \
            return __VA_ARGS__();                \
        }                                        \
        return cudaErrorInvalidValue;            \
    }()

// kv_t: the element type of K and V for a ggml_rerope_kv_type.
#define KV_TYPE_SWITCH(KV_TYPE, ...)           \
    [&]() -> cudaError_t {                     \
        if ((KV_TYPE) == GGML_REROPE_KV_F16) { \
            using kv_t = half;                 \
            return __VA_ARGS__();              \
        }                                      \
        if ((KV_TYPE) == GGML_REROPE_KV_F32) { \
            using kv_t = float;                \
            return __VA_ARGS__();              \
        }                                      \
        return cudaErrorInvalidValue;          \
    }()
