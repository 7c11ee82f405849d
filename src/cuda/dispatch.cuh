// The one place that turns a call's run-time head size and K/V types into template arguments
// (FlashAttention's static_switch.h). Adding a head size: one line in HEADDIM_SWITCH, and
// MAX_HEAD_DIM (common.cuh) if it is larger.
//
//   return HEADDIM_SWITCH(head_dim, [&] { return launch<kHeadDim>(args, stream); });
//   return KV_PATH_SWITCH(k_type, v_type, [&] { return launch<kHeadDim, kv_t>(args, stream); });
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

// How a call's K / V pair is read: both f16 (cp.async straight into f16 tiles), both f32
// (converted while loading; decode runs the f32 kernel), or any other pair of f16, bf16, q8_0 and
// q4_0: staged (kv_staging.cuh: raw copies converted in shared memory), with the two types read
// at run time, so one instantiation per head size serves every such pair. f32 beside another
// type is not built (kv_pair_on_cuda says so; the CPU operator runs it).
namespace rerope_cuda {

struct StagedKV {};  // kv_t of the staged path

enum class KvPath { F16, F32, STAGED, NONE };

inline KvPath kv_path(int k_type, int v_type) {
    const auto staged = [](int t) {
        return t == GGML_REROPE_KV_F16 || t == GGML_REROPE_KV_BF16 || t == GGML_REROPE_KV_Q8_0 ||
               t == GGML_REROPE_KV_Q4_0;
    };
    if (k_type == GGML_REROPE_KV_F16 && v_type == GGML_REROPE_KV_F16) return KvPath::F16;
    if (k_type == GGML_REROPE_KV_F32 && v_type == GGML_REROPE_KV_F32) return KvPath::F32;
    if (staged(k_type) && staged(v_type)) return KvPath::STAGED;
    return KvPath::NONE;
}

inline bool kv_pair_on_cuda(int k_type, int v_type) { return kv_path(k_type, v_type) != KvPath::NONE; }

}  // namespace rerope_cuda

// kv_t: half, float or StagedKV for a (k_type, v_type) pair.
#define KV_PATH_SWITCH(K_TYPE, V_TYPE, ...)                 \
    [&]() -> cudaError_t {                                  \
        switch (rerope_cuda::kv_path((K_TYPE), (V_TYPE))) { \
            case rerope_cuda::KvPath::F16: {                \
                using kv_t = half;                          \
                return __VA_ARGS__();                       \
            }                                               \
            case rerope_cuda::KvPath::F32: {                \
                using kv_t = float;                         \
                return __VA_ARGS__();                       \
            }                                               \
            case rerope_cuda::KvPath::STAGED: {             \
                using kv_t = rerope_cuda::StagedKV;         \
                return __VA_ARGS__();                       \
            }                                               \
            default: return cudaErrorInvalidValue;          \
        }                                                   \
    }()

// kKeyType: the storage type of K as a template argument (the key rotation pre-pass).
#define KEY_TYPE_CASE(TYPE, ...)                \
    if (key_type_ == (TYPE)) {                  \
        constexpr static int kKeyType = (TYPE); \
        return __VA_ARGS__();                   \
    }
#define KEY_TYPE_SWITCH(K_TYPE, ...)                    \
    [&]() -> cudaError_t {                              \
        const int key_type_ = (K_TYPE);                 \
        KEY_TYPE_CASE(GGML_REROPE_KV_F32, __VA_ARGS__)  \
        KEY_TYPE_CASE(GGML_REROPE_KV_F16, __VA_ARGS__)  \
        KEY_TYPE_CASE(GGML_REROPE_KV_BF16, __VA_ARGS__) \
        KEY_TYPE_CASE(GGML_REROPE_KV_Q8_0, __VA_ARGS__) \
        KEY_TYPE_CASE(GGML_REROPE_KV_Q4_0, __VA_ARGS__) \
        return cudaErrorInvalidValue;                   \
    }()
