// The split-K workspace of both decode kernels (decode_f32.cu, decode_mma.cu) and the end
// they share: a block merges its warps' partial rows and writes the block's partial result,
// unnormalised and relative to its own max, to its split's slot, where decode_reduce.cu
// merges the splits.
//
// Workspace, in floats: slot (split, kvh, row) = (split * n_head_kv + kvh) * rows + row for
// rows = n_q x group query rows per KV head; first [slots][D] outputs, then [slots][2]
// (max, sum).
#pragma once

#include <math.h>

#include "heuristics.cuh"
#include "softmax.cuh"

namespace rerope_cuda {

inline size_t decode_workspace_floats(const DecodePlan & p, const AttnArgs & a, int head_dim) {
    return (size_t) p.n_split * a.n_head_kv * p.rows * (head_dim + 2);
}

// s_o: [W][ROWS][D] per-warp outputs, s_ml: [W][ROWS][2] per-warp (max, sum), in shared memory,
// written before a __syncthreads. Rows r0 .. r0 + nrows - 1 of KV head kvh, split `split`
// (the grid's x: gridDim.x = n_split).
template <int D, int W, int ROWS>
__device__ __forceinline__ void write_split_partial(const AttnArgs & a, const DecodePlan & plan, int split, int kvh,
                                                    int r0, int nrows, const float * s_o, const float * s_ml,
                                                    float * work, int tid, int nthreads) {
    const size_t slot0 = ((size_t) split * a.n_head_kv + kvh) * plan.rows + r0;
    float * part_o = work + slot0 * D;
    float * part_ml = work + (size_t) gridDim.x * a.n_head_kv * plan.rows * D + slot0 * 2;
    for (int idx = tid; idx < nrows * D; idx += nthreads) {
        const int r = idx / D, d = idx % D;
        float mm = -INFINITY;
#pragma unroll
        for (int w = 0; w < W; ++w) mm = fmaxf(mm, s_ml[(w * ROWS + r) * 2]);
        const float mu = softmax_base(mm);
        float o = 0.f, ls = 0.f;
#pragma unroll
        for (int w = 0; w < W; ++w) {
            const float wt = softmax_weight(s_ml[(w * ROWS + r) * 2], mu);
            o += wt * s_o[(w * ROWS + r) * D + d];
            ls += wt * s_ml[(w * ROWS + r) * 2 + 1];
        }
        part_o[(size_t) r * D + d] = o;
        if (d == 0) part_ml[2 * r] = mm, part_ml[2 * r + 1] = ls;
    }
}

}  // namespace rerope_cuda
