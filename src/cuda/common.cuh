// Arguments and position helpers shared by the CUDA kernels (prefill and decode).
// The math is the contract in ggml_rerope.h; this file only turns it into per-row /
// per-key positions, scale factors and tile classes.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "ggml_rerope.h"

namespace rerope_cuda {

constexpr int MAX_HEAD_DIM = 128;             // largest head size built (dispatch.cuh lists them)
constexpr int MAX_PAIRS = MAX_HEAD_DIM / 2;   // rotated pairs at most (n_rot <= d)
constexpr float LOG2E = 1.4426950408889634f;  // softmax runs in base 2: scores are pre-scaled by log2(e)
constexpr int KPOS_INVALID = 0x7fffffff;      // key slot past n_kv: always masked

// Everything a kernel needs; passed by value (about 600 bytes of kernel parameters).
struct AttnArgs {
    const float * q;         // [n_q][n_head][d]
    const void * k;          // [n_kv][n_head_kv] rows of k_type (kv_types.cuh), raw (unrotated)
    const void * v;          // [n_kv][n_head_kv] rows of v_type
    float * out;             // [n_q][n_head][d]
    const int32_t * q_pos;   // n_q positions, or NULL: n_kv - n_q + i
    const int32_t * k_pos;   // n_kv positions, or NULL: j
    const int2 * k_bounds;   // (min, max) position of each key tile when k_pos is given
    const half * k_near;     // prefill only: R_(k_pos[j]) k_j, f16, same layout as k
    const half * k_far;      // prefill only, LEAKY / GROUP / CHUNK: R_(far_k_pos(j)) k_j
    int n_q, n_head, n_kv, n_head_kv, group;  // group = n_head / n_head_kv
    int k_type, v_type;                       // ggml_rerope_kv_type of each
    int k_row_bytes, v_row_bytes;             // bytes of one row of d elements
    int k_chunks, v_chunks;                   // 16-byte granules of a staged row (kv_staging.cuh)
    int k_hadamard;  // 0, or B: k rows hold H_B k per B dims (hadamard.cuh); only the staged decode sees B
    int n_rot;
    int rope_mode;  // ggml_rerope_rope_mode
    int far_mode;   // ggml_rerope_far_mode
    int window, group_size, logn_len, causal;
    int chunk_len;                   // FAR_CHUNK s
    int sliding_window, sink_tokens; // keys with i - j >= sliding_window drop unless position < sink_tokens
    double leaky_k;
    float scale;                 // resolved score scale (1/sqrt(d) when params->scale == 0)
    double theta[MAX_PAIRS];     // theta_m = f_m * base^(-2m/n_rot), in double
};

__device__ __forceinline__ int q_position(const AttnArgs & a, int i) {
    return a.q_pos ? a.q_pos[i] : a.n_kv - a.n_q + i;
}

__device__ __forceinline__ int k_position(const AttnArgs & a, int j) { return a.k_pos ? a.k_pos[j] : j; }

// CLAMP's far path uses the raw key (far_k_pos = 0); LEAKY, GROUP and CHUNK rotate keys to far_k_pos(j).
__host__ __device__ __forceinline__ bool far_rotates_keys(const AttnArgs & a) {
    return a.far_mode != GGML_REROPE_FAR_CLAMP;
}

// Position the query is rotated to on the far path (key at far_k_pos), so that
// far_q_pos(i) - far_k_pos(j) = rel(i, j) for i - j >= w.
__device__ __forceinline__ double far_q_pos(const AttnArgs & a, int i) {
    if (a.far_mode == GGML_REROPE_FAR_LEAKY)
        return (double) i / a.leaky_k + (double) a.window - (double) a.window / a.leaky_k;
    if (a.far_mode == GGML_REROPE_FAR_GROUP)
        return floor((double) i / a.group_size) + (double) a.window - floor((double) a.window / a.group_size);
    return (double) a.window;  // CLAMP: key stays raw; CHUNK: w - (j mod s)
}

__device__ __forceinline__ double far_k_pos(const AttnArgs & a, int j) {
    if (a.far_mode == GGML_REROPE_FAR_LEAKY) return (double) j / a.leaky_k;
    if (a.far_mode == GGML_REROPE_FAR_GROUP) return floor((double) j / a.group_size);
    if (a.far_mode == GGML_REROPE_FAR_CHUNK) return (double) (j % a.chunk_len);
    return 0.0;
}

// lambda_i * scale * log2(e): folded into the query so that scores come out in base 2.
__device__ __forceinline__ float query_factor(const AttnArgs & a, int i) {
    double lambda = 1.0;
    if (a.logn_len > 0 && i + 1 > 1) lambda = fmax(1.0, log((double) i + 1.0) / log((double) a.logn_len));
    return (float) (lambda * a.scale) * LOG2E;
}

// Tile classes from position ranges: near for every pair, far for every pair, or both (the
// band, where key_is_near picks per pair). CHUNK's near pairs have i - j <= w, and every pair
// with i - j <= w - s is near (ggml_rerope.h).
struct TileClass {
    bool near_all, far_all;
};

__device__ __forceinline__ TileClass classify(const AttnArgs & a, int qmin, int qmax, int kmin, int kmax) {
    TileClass c;
    const long long dmax = (long long) qmax - kmin, dmin = (long long) qmin - kmax;
    if (a.far_mode == GGML_REROPE_FAR_CHUNK) {
        c.near_all = dmax <= a.window - a.chunk_len;
        c.far_all = !c.near_all && dmin > a.window;
    } else {
        c.near_all = dmax < a.window;
        c.far_all = !c.near_all && dmin >= a.window;
    }
    return c;
}

// Whether every key of a tile (positions kmin..kmax) is dropped by the sliding window for every
// query at qmin or later.
__device__ __forceinline__ bool tile_all_dropped(const AttnArgs & a, int qmin, int kmin, int kmax) {
    return a.sliding_window > 0 && (long long) qmin - kmax >= a.sliding_window && kmin >= a.sink_tokens;
}

// (min, max) key position of tile t (size `tile`); only valid keys count.
__device__ __forceinline__ int2 key_tile_bounds(const AttnArgs & a, int t, int tile) {
    if (a.k_bounds) return a.k_bounds[t];
    int j0 = t * tile;
    int j1 = min(j0 + tile, a.n_kv) - 1;
    return make_int2(j0, j1);
}

// The first key tile after t, stepping by `step`, that some query (positions qmin..qmax) may
// see: tiles wholly in the causal future or wholly dropped by the sliding window are never
// loaded. n_tiles or more: none left.
__device__ __forceinline__ int next_visible_tile(const AttnArgs & a, int t, int step, int n_tiles, int tile, int qmin,
                                                 int qmax) {
    for (t += step; t < n_tiles; t += step) {
        const int2 b = key_tile_bounds(a, t, tile);
        if (!(a.causal && b.x > qmax) && !tile_all_dropped(a, qmin, b.x, b.y)) break;
    }
    return t;
}

__device__ __forceinline__ float to_float(half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ half from_float<half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

}  // namespace rerope_cuda
