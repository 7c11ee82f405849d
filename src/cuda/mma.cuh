// Tensor-core building blocks of the prefill and f16 decode kernels (sm_80+): ldmatrix,
// mma.sync m16n8k16 (f16 operands, f32 accumulators) and the two tile products of attention.
//
// Fragment layout of an m16n8 accumulator (PTX ISA, "mma.m16n8k16"): lane = 4 g + tq holds
// c[e], e = 0..3, at row g + 8 (e >> 1), column 2 tq + (e & 1). So each thread holds two rows
// (g, g + 8), and a row's 8 columns sit in the 4 lanes 4g .. 4g + 3 (a quad).
#pragma once

#include "common.cuh"
#include "cp_async.cuh"

namespace rerope_cuda {

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const half * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const half * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c += a * b on one m16n8k16 tile, f16 operands, f32 accumulators.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

// The shared-memory row and column (in halves) each lane hands ldmatrix.x4, by operand:
// A (16 query rows x k16): matrices = rows 0-7 / 8-15 at columns 0-7, then at 8-15.
__device__ __forceinline__ int ldsm_a_row(int lane) { return lane % 16; }
__device__ __forceinline__ int ldsm_a_col(int lane) { return (lane / 16) * 8; }
// B from K (keys as rows, two n8 blocks x k16): keys 0-7 at dims 0-7 / 8-15, then keys 8-15.
__device__ __forceinline__ int ldsm_k_row(int lane) { return (lane % 8) + (lane / 16) * 8; }
__device__ __forceinline__ int ldsm_k_col(int lane) { return ((lane / 8) % 2) * 8; }
// B from V, transposed (k16 keys x two n8 dim blocks): keys 0-7 / 8-15 at dims 0-7, then 8-15.
__device__ __forceinline__ int ldsm_v_row(int lane) { return (lane % 8) + ((lane / 8) % 2) * 8; }
__device__ __forceinline__ int ldsm_v_col(int lane) { return (lane / 16) * 8; }

// A fragments of 16 query rows x D (f16 rows at sq, stride SD halves), one per k16 step.
template <int D, int SD>
__device__ __forceinline__ void load_query_fragments(uint32_t (&q)[D / 16][4], const half * sq, int lane) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) ldsm_x4(q[ks], sq + ldsm_a_row(lane) * SD + ks * 16 + ldsm_a_col(lane));
}

// Scores of 16 keys (rows of sk, stride SD): c0 (keys 0-7), c1 (keys 8-15) += q . K^T.
template <int D, int SD>
__device__ __forceinline__ void qk_16keys(float (&c0)[4], float (&c1)[4], const uint32_t (&q)[D / 16][4],
                                          const half * sk, int lane) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t b[4];
        ldsm_x4(b, sk + ldsm_k_row(lane) * SD + ks * 16 + ldsm_k_col(lane));
        mma_16816(c0, q[ks], b[0], b[1]);
        mma_16816(c1, q[ks], b[2], b[3]);
    }
}

// o (16 rows x D) += P . V for 16 keys (rows of sv, stride SD): the probabilities of keys 0-7
// (p0) and 8-15 (p1), accumulator fragments, become the f16 A operand as they lie.
template <int D, int SD>
__device__ __forceinline__ void pv_16keys(float (&o)[D / 8][4], const float (&p0)[4], const float (&p1)[4],
                                          const half * sv, int lane) {
    const uint32_t p[4] = {pack_half2(p0[0], p0[1]), pack_half2(p0[2], p0[3]), pack_half2(p1[0], p1[1]),
                           pack_half2(p1[2], p1[3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_x4_trans(b, sv + ldsm_v_row(lane) * SD + dp * 16 + ldsm_v_col(lane));
        mma_16816(o[2 * dp], p, b[0], b[1]);
        mma_16816(o[2 * dp + 1], p, b[2], b[3]);
    }
}

}  // namespace rerope_cuda
