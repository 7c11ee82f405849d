// The Walsh-Hadamard transform of Hadamard-rotated keys (ggml_rerope_attn_call.k_hadamard = B):
// a stored row holds Q k per block of B dims, Q the orthonormal Walsh-Hadamard matrix (ggml_rerope.h
// calls it H_B). Q is its own inverse, so applying it again gives the key, and (Q x) . (Q k) = x . k.
// The butterflies below compute sqrt(B) Q (entries +-1); callers scale by 1 / sqrt(B).
//
// A row is spread over the lanes of a lane group, E consecutive elements a lane: butterflies of
// stride < E stay in registers, longer ones are shuffles inside the group.
#pragma once

#include <cuda_fp16.h>

namespace rerope_cuda {

// x: elements E g .. E g + E - 1 of a row (g = lane % group size). Applies sqrt(B) Q per block of B
// dims. Every lane of the warp calls it with the same B.
template <int E> __device__ __forceinline__ void hadamard_lane(float (&x)[E], int block, int lane) {
    static_assert(E >= 2 && (E & (E - 1)) == 0, "elements a lane: a power of two >= 2");
    // Stage s pairs element e (bit s clear) with e + s: (a, b) -> (a + b, a - b).
#pragma unroll
    for (int s = 1; s < E; s <<= 1) {
        if (s >= block) break;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            if (i & s) continue;
            const float a = x[i], b = x[i + s];
            x[i] = a + b, x[i + s] = a - b;
        }
    }
    for (int s = E; s < block; s <<= 1) {
        const int lane_bit = s / E;
        const bool upper = (lane & lane_bit) != 0;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            const float other = __shfl_xor_sync(0xffffffffu, x[i], lane_bit);
            x[i] = upper ? other - x[i] : x[i] + other;
        }
    }
}

// dst[r] = Q src[r] for `rows` f16 rows of D in shared memory, by one warp: half a warp a row,
// two rows at a time (src may be dst: a lane writes only what it read). Callers __syncwarp after.
template <int D>
__device__ __forceinline__ void hadamard_rows(const half * src, int src_stride, half * dst, int dst_stride, int rows,
                                              int block, float scale, int lane) {
    constexpr int LANES = 16, E = D / LANES;
    static_assert(E % 2 == 0, "half2 loads");
    const int g = lane % LANES;
    for (int r0 = 0; r0 < rows; r0 += 2) {
        const int r = r0 + lane / LANES;
        const bool live = r < rows;  // both halves run the shuffles; a padding half stores nothing
        float x[E];
#pragma unroll
        for (int i = 0; i < E; i += 2) {
            const float2 v = live ? __half22float2(reinterpret_cast<const half2 *>(src + r * src_stride + E * g)[i / 2])
                                  : make_float2(0.f, 0.f);
            x[i] = v.x, x[i + 1] = v.y;
        }
        hadamard_lane<E>(x, block, lane);
        if (live)
#pragma unroll
            for (int i = 0; i < E; i += 2)
                reinterpret_cast<half2 *>(dst + r * dst_stride + E * g)[i / 2] =
                    __floats2half2_rn(x[i] * scale, x[i + 1] * scale);
    }
}

}  // namespace rerope_cuda
