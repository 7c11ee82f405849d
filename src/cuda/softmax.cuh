// Online softmax and score masks, shared by every kernel (prefill, both decodes, the split
// merge). Scores arrive in base 2 (the query carries lambda_i * scale * log2(e)), so the
// exponentials are exp2f. A row keeps a running max m and sum l; when m rises, everything
// accumulated so far is rescaled by 2^(m_old - m_new). Partial results (max, sum, output)
// of warps or splits merge the same way.
#pragma once

#include <math.h>

#include "common.cuh"

namespace rerope_cuda {

// ---------------------------------------------------------------- masks

// Whether the pair (query at q, key at kp) is on the near path (ordinary RoPE): i - j < w;
// CHUNK: i - j <= w - s, the same chunk, or the chunk before while (i mod s) + s <= w.
__device__ __forceinline__ bool key_is_near(const AttnArgs & a, int q, int kp) {
    const long long dist = (long long) q - kp;
    if (a.far_mode != GGML_REROPE_FAR_CHUNK) return dist < a.window;
    if (dist <= a.window - a.chunk_len) return true;
    const int s = a.chunk_len, cq = q / s, ck = kp / s;
    return ck == cq || (ck == cq - 1 && q % s + s <= a.window);
}

// A key slot past n_kv, (causal) a key after the query, or a key the sliding window drops: weight 0.
__device__ __forceinline__ bool key_is_masked(const AttnArgs & a, int q, int kp) {
    return kp == KPOS_INVALID || (a.causal && kp > q) ||
           (a.sliding_window > 0 && (long long) q - kp >= a.sliding_window && kp >= a.sink_tokens);
}

// Whether tile t (size `tile`, positions kb) holds any masked key for queries in qmin..qmax:
// it runs past n_kv, (causal) reaches past the earliest query, or reaches past the sliding window.
__device__ __forceinline__ bool tile_needs_mask(const AttnArgs & a, int t, int tile, int2 kb, int qmin, int qmax) {
    return (t + 1) * tile > a.n_kv || (a.causal && kb.y > qmin) ||
           (a.sliding_window > 0 && (long long) qmax - kb.x >= a.sliding_window && kb.y >= a.sink_tokens);
}

// ---------------------------------------------------------------- running max and merges

// Exponent base for a running max m: a row that has seen only masked keys (m = -inf) uses
// 0, so its terms are exp2(-inf) = 0 instead of exp2(-inf + inf) = NaN.
__device__ __forceinline__ float softmax_base(float m) { return m == -INFINITY ? 0.f : m; }

// Weight 2^(m - base) of a term or partial result with max m, brought to `base`.
__device__ __forceinline__ float softmax_weight(float m, float base) { return exp2f(m - base); }

// A row's running max m rises to m_new (>= m): returns the base for the new terms, and in
// alpha the factor that rescales what was accumulated against the old max.
__device__ __forceinline__ float softmax_raise_max(float & m, float m_new, float & alpha) {
    const float base = softmax_base(m_new);
    alpha = softmax_weight(m, base);
    m = m_new;
    return base;
}

// Two partial results of one row, with maxima m_self and m_other, merged: returns the common
// max and the weights that bring each side's sum and output to it.
__device__ __forceinline__ float softmax_merge_weights(float m_self, float m_other, float & w_self, float & w_other) {
    const float mm = fmaxf(m_self, m_other);
    const float base = softmax_base(mm);
    w_self = softmax_weight(m_self, base), w_other = softmax_weight(m_other, base);
    return mm;
}

// ---------------------------------------------------------------- tensor-core fragments
// The scores of a key tile as m16n8 accumulators s[NB][4] (mma.cuh: a thread holds rows g and
// g + 8, element e at row e >> 1 and key 8 nb + 2 tq + (e & 1)); qp: the two rows' positions,
// kp_s: the tile's key positions.

__device__ __forceinline__ int fragment_key(int nb, int e, int tq) { return nb * 8 + 2 * tq + (e & 1); }

// The band between the paths: far scores t replace near scores s (one n8 block, keys from
// kp_block) where the pair is far.
__device__ __forceinline__ void take_far_scores(float (&s)[4], const float (&t)[4], const AttnArgs & a,
                                                const int * kp_block, const int (&qp)[2], int tq) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
        if (!key_is_near(a, qp[e >> 1], kp_block[fragment_key(0, e, tq)])) s[e] = t[e];
}

template <int NB>
__device__ __forceinline__ void mask_scores(float (&s)[NB][4], const AttnArgs & a, const int * kp_s, const int (&qp)[2],
                                            int tq) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (key_is_masked(a, qp[e >> 1], kp_s[fragment_key(nb, e, tq)])) s[nb][e] = -INFINITY;
}

// One key tile of the online softmax on fragments: s (NB blocks of scores) becomes the
// unnormalised probabilities; m, l (the thread's two rows: max, this thread's part of the
// row sum) and the output accumulator o (NO blocks) are updated. The row max is taken over
// the row's quad.
template <int NB, int NO>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NB][4], float (&m)[2], float (&l)[2],
                                                    float (&o)[NO][4]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float mx = fmaxf(s[0][2 * h], s[0][2 * h + 1]);
#pragma unroll
        for (int nb = 1; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * h], s[nb][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float alpha;
        const float base = softmax_raise_max(m[h], fmaxf(m[h], mx), alpha);
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
            s[nb][2 * h] = exp2f(s[nb][2 * h] - base);
            s[nb][2 * h + 1] = exp2f(s[nb][2 * h + 1] - base);
            sum += s[nb][2 * h] + s[nb][2 * h + 1];
        }
        l[h] = l[h] * alpha + sum;
#pragma unroll
        for (int nb = 0; nb < NO; ++nb) o[nb][2 * h] *= alpha, o[nb][2 * h + 1] *= alpha;
    }
}

// A row's full sum from the partial sums of its quad.
__device__ __forceinline__ float quad_row_sum(float l) {
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    return l;
}

}  // namespace rerope_cuda
