// Arguments and position helpers shared by the CUDA kernels (prefill and decode).
// The math is the contract in ggml_rerope.h; this file only turns it into per-row /
// per-key positions and scale factors.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

namespace rerope_cuda {

constexpr int MAX_HEAD_DIM = 128;             // head sizes built: 64 and 128
constexpr int MAX_PAIRS = MAX_HEAD_DIM / 2;   // rotated pairs at most (n_rot <= d)
constexpr float LOG2E = 1.4426950408889634f;  // softmax runs in base 2: scores are pre-scaled by log2(e)
constexpr int KPOS_INVALID = 0x7fffffff;      // key slot past n_kv: always masked

// Everything a kernel needs; passed by value (about 600 bytes of kernel parameters).
struct AttnArgs {
    const float * q;         // [n_q][n_head][d]
    const void * k;          // [n_kv][n_head_kv][d], half or float, raw (unrotated)
    const void * v;          // same layout as k
    float * out;             // [n_q][n_head][d]
    const int32_t * q_pos;   // n_q positions, or NULL: n_kv - n_q + i
    const int32_t * k_pos;   // n_kv positions, or NULL: j
    const int2 * k_bounds;   // (min, max) position of each key tile when k_pos is given
    const half * k_near;     // prefill only: R_(k_pos[j]) k_j, f16, same layout as k
    const half * k_far;      // prefill only, LEAKY / GROUP: R_(far_k_pos(j)) k_j
    int n_q, n_head, n_kv, n_head_kv, group;  // group = n_head / n_head_kv
    int n_rot, rope_mode, far_mode, window, group_size, logn_len, causal;
    double leaky_k;
    float scale;                 // resolved score scale (1/sqrt(d) when params->scale == 0)
    double theta[MAX_PAIRS];     // theta_m = f_m * base^(-2m/n_rot), in double
};

__device__ __forceinline__ int q_position(const AttnArgs & a, int i) {
    return a.q_pos ? a.q_pos[i] : a.n_kv - a.n_q + i;
}

__device__ __forceinline__ int k_position(const AttnArgs & a, int j) { return a.k_pos ? a.k_pos[j] : j; }

// Position the query is rotated to on the far path (key at far_k_pos), so that
// far_q_pos(i) - far_k_pos(j) = rel(i, j) for i - j >= w.
__device__ __forceinline__ double far_q_pos(const AttnArgs & a, int i) {
    if (a.far_mode == 1) return (double) i / a.leaky_k + (double) a.window - (double) a.window / a.leaky_k;
    if (a.far_mode == 2)
        return floor((double) i / a.group_size) + (double) a.window - floor((double) a.window / a.group_size);
    return (double) a.window;  // CLAMP: key stays raw
}

__device__ __forceinline__ double far_k_pos(const AttnArgs & a, int j) {
    if (a.far_mode == 1) return (double) j / a.leaky_k;
    if (a.far_mode == 2) return floor((double) j / a.group_size);
    return 0.0;
}

// lambda_i * scale * log2(e): folded into the query so that scores come out in base 2.
__device__ __forceinline__ float query_factor(const AttnArgs & a, int i) {
    double lambda = 1.0;
    if (a.logn_len > 0 && i + 1 > 1) lambda = fmax(1.0, log((double) i + 1.0) / log((double) a.logn_len));
    return (float) (lambda * a.scale) * LOG2E;
}

// Tile classes from position ranges: near for every pair, far for every pair, or both.
struct TileClass {
    bool skip, near_all, far_all;
};

__device__ __forceinline__ TileClass classify(const AttnArgs & a, int qmin, int qmax, int kmin, int kmax) {
    TileClass c;
    c.skip = a.causal && kmin > qmax;
    c.near_all = (long long) qmax - kmin < a.window;
    c.far_all = !c.near_all && (long long) qmin - kmax >= a.window;
    return c;
}

// (min, max) key position of tile t (size `tile`); only valid keys count.
__device__ __forceinline__ int2 key_tile_bounds(const AttnArgs & a, int t, int tile) {
    if (a.k_bounds) return a.k_bounds[t];
    int j0 = t * tile;
    int j1 = min(j0 + tile, a.n_kv) - 1;
    return make_int2(j0, j1);
}

// ---------------------------------------------------------------- small PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void * p) {
    return (uint32_t) __cvta_generic_to_shared(p);
}

// 16-byte async copy global -> shared; src_bytes 0 zero-fills (rows past n_kv).
__device__ __forceinline__ void cp_async16(void * dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float to_float(half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ half from_float<half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

}  // namespace rerope_cuda
