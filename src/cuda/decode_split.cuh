// The end of both decode kernels (decode.cu, decode_mma.cu): a block merges its warps' partial
// rows and writes the block's partial result, unnormalised and relative to its own max, to its
// split's slot of the workspace, where reduce_kernel (decode.cu) merges the splits.
#pragma once

#include <math.h>

#include "launch.cuh"

namespace rerope_cuda {

// s_o: [W][ROWS][D] per-warp outputs, s_ml: [W][ROWS][2] per-warp (max, sum), in shared memory,
// written before a __syncthreads. Rows r0 .. r0 + nrows - 1 of KV head kvh, split `split`.
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
        const float mu = mm == -INFINITY ? 0.f : mm;
        float o = 0.f, ls = 0.f;
#pragma unroll
        for (int w = 0; w < W; ++w) {
            const float wt = exp2f(s_ml[(w * ROWS + r) * 2] - mu);
            o += wt * s_o[(w * ROWS + r) * D + d];
            ls += wt * s_ml[(w * ROWS + r) * 2 + 1];
        }
        part_o[(size_t) r * D + d] = o;
        if (d == 0) part_ml[2 * r] = mm, part_ml[2 * r + 1] = ls;
    }
}

}  // namespace rerope_cuda
