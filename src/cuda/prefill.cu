// Prefill attention: FlashAttention-2 on tensor cores, one fused pass for ReRoPE.
//
// Per (head, query tile) the block walks the key tiles. Each tile pair is classified
// from position ranges (common.cuh):
//   near  (every i - j < w): S = (R_i q) . (R_j k)        -- key rotated at j
//   far   (every i - j >= w): S = (R_far(i) q) . (R_far(j) k) -- CLAMP: raw key, query at w
//   mixed (the band around w): both, selected per element.
// so each score is computed once except in the band. The cache holds raw keys; each call
// rotates them once into a transient f16 workspace (rotate_keys.cu: O(n d), against the
// O(n^2 d) here): rotating every key tile in shared memory per query tile repeats that
// work n / BLOCK_M times and ran 2.5x slower.
// Queries are rotated once per path, with lambda_i * scale * log2(e) folded in; the softmax
// is online and in base 2 (softmax.cuh).
// K/V element types: f16 (cp.async into the tiles), f32 (load, convert, store), or staged
// (bf16, q8_0, q4_0 and mixed pairs: raw tiles by cp.async, converted to f16 in shared memory
// once landed; kv_staging.cuh says why). Only V and CLAMP's far keys come from the cache: near
// and LEAKY / GROUP / CHUNK far keys come from the f16 workspace of the rotation pre-pass.
#include <math.h>

#include <type_traits>

#include "dispatch.cuh"
#include "kv_staging.cuh"
#include "launch.cuh"
#include "mma.cuh"
#include "rotary.cuh"
#include "softmax.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

// Issues the copy of rows j0 .. j0 + BLOCK_N - 1 of one K or V head into dst (f16).
// Half: cp.async (asynchronous, zero-fill past n_kv). Float: load, convert, store.
template <class Tr>
__device__ __forceinline__ void load_tile(half * dst, const half * src, const AttnArgs & a, int kvh, int j0, int tid) {
    constexpr int CH = Tr::D / 8;
    for (int idx = tid; idx < Tr::BLOCK_N * CH; idx += Tr::THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int j = j0 + r;
        const half * s = src + ((size_t) min(j, a.n_kv - 1) * a.n_head_kv + kvh) * Tr::D + c * 8;
        cp_async16(dst + r * Tr::SD + c * 8, s, j < a.n_kv ? 16 : 0);
    }
}

template <class Tr>
__device__ __forceinline__ void load_tile(half * dst, const float * src, const AttnArgs & a, int kvh, int j0, int tid) {
    constexpr int CH = Tr::D / 8;
    for (int idx = tid; idx < Tr::BLOCK_N * CH; idx += Tr::THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int j = j0 + r;
        float4 x0 = make_float4(0.f, 0.f, 0.f, 0.f), x1 = x0;
        if (j < a.n_kv) {
            const float4 * s = reinterpret_cast<const float4 *>(src + ((size_t) j * a.n_head_kv + kvh) * Tr::D + c * 8);
            x0 = s[0];
            x1 = s[1];
        }
        uint4 h;
        h.x = pack_half2(x0.x, x0.y);
        h.y = pack_half2(x0.z, x0.w);
        h.z = pack_half2(x1.x, x1.y);
        h.w = pack_half2(x1.z, x1.w);
        *reinterpret_cast<uint4 *>(dst + r * Tr::SD + c * 8) = h;
    }
}

// s = q (the warp's 16 rows x D) . K^T for the BLOCK_N keys of a tile: BLOCK_N / 8 n8 blocks.
template <class Tr>
__device__ __forceinline__ void qk_tile(float (&s)[Tr::BLOCK_N / 8][4], const uint32_t (&q)[Tr::D / 16][4],
                                        const half * sk, int lane) {
#pragma unroll
    for (int nb = 0; nb < Tr::BLOCK_N / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
    for (int np = 0; np < Tr::BLOCK_N / 16; ++np)
        qk_16keys<Tr::D, Tr::SD>(s[2 * np], s[2 * np + 1], q, sk + np * 16 * Tr::SD, lane);
}

// T: half or float (K and V of that type), or StagedKV (kv_staging.cuh).
template <int D, typename T>
__global__ void __launch_bounds__(PrefillTraits<D>::THREADS, PrefillTraits<D>::MIN_BLOCKS)
    prefill_kernel(const __grid_constant__ AttnArgs a) {
    using Tr = PrefillTraits<D>;
    constexpr bool STAGED = std::is_same<T, StagedKV>::value;
    constexpr int BM = Tr::BLOCK_M, BN = Tr::BLOCK_N, SD = Tr::SD, NB = BN / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    half * sKn0 = reinterpret_cast<half *>(smem + Tr::OFF_KN);  // [STAGES] near-rotated keys
    half * sKf0 = reinterpret_cast<half *>(smem + Tr::OFF_KF);  // [STAGES] raw (CLAMP) or far-rotated keys
    half * sV0 = reinterpret_cast<half *>(smem + Tr::OFF_V);    // [STAGES] values
    int * s_kpos = reinterpret_cast<int *>(smem + Tr::OFF_KPOS);
    int * s_qpos = reinterpret_cast<int *>(smem + Tr::OFF_QPOS);
    double * s_theta = reinterpret_cast<double *>(smem + Tr::OFF_THETA);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int mt = gridDim.x - 1 - blockIdx.x;  // longest (last) query tiles start first
    const int head = blockIdx.y, kvh = head / a.group;
    const int q0 = mt * BM;
    const int rows = min(BM, a.n_q - q0);
    using Elem = typename std::conditional<STAGED, half, T>::type;  // staged: f16 halves go straight in
    const Elem * kg = static_cast<const Elem *>(a.k);
    const Elem * vg = static_cast<const Elem *>(a.v);
    // Staged: raw tiles of the far keys (CLAMP) and values, [STAGES] each; f16 halves have none.
    const KvRows krows = key_rows(a), vrows = value_rows(a);
    const size_t raw_k_stage = STAGED ? Tr::raw_key_stage_bytes(a) : 0;
    const size_t raw_v_stage = STAGED ? Tr::raw_value_stage_bytes(a) : 0;
    unsigned char * raw_k0 = smem + Tr::OFF_RAW;
    unsigned char * raw_v0 = raw_k0 + Tr::STAGES * raw_k_stage;

    for (int i = tid; i < a.n_rot / 2; i += Tr::THREADS) s_theta[i] = a.theta[i];
    __shared__ float s_qfac[BM];  // lambda_i * scale * log2(e) per row, computed once
    if (tid < BM) {
        s_qpos[tid] = q_position(a, q0 + min(tid, rows - 1));  // pad rows repeat the last
        s_qfac[tid] = query_factor(a, s_qpos[tid]);
    }
    __syncthreads();
    int qmin = s_qpos[lane], qmax = s_qpos[lane];
#pragma unroll
    for (int r = lane + 32; r < BM; r += 32) qmin = min(qmin, s_qpos[r]), qmax = max(qmax, s_qpos[r]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        qmin = min(qmin, __shfl_xor_sync(0xffffffffu, qmin, o));
        qmax = max(qmax, __shfl_xor_sync(0xffffffffu, qmax, o));
    }

    // Query rows, rotated for both paths and pre-scaled, staged in the key buffers.
    half * sQn = sKn0;
    half * sQf = sKf0;
    stage_query_rows<D, SD>(
        a, BM, rows, [&](int r) { return a.q + ((size_t) (q0 + r) * a.n_head + head) * D; }, s_qpos, s_qfac, s_theta,
        sQn, sQf, tid, Tr::THREADS);
    __syncthreads();
    uint32_t qn[D / 16][4], qf[D / 16][4];
    load_query_fragments<D, SD>(qn, sQn + warp * 16 * SD, lane);
    load_query_fragments<D, SD>(qf, sQf + warp * 16 * SD, lane);
    __syncthreads();

    const int g = lane / 4, tq = lane % 4;
    const int qp[2] = {s_qpos[warp * 16 + g], s_qpos[warp * 16 + g + 8]};
    float o[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};

    const int nt = (a.n_kv + BN - 1) / BN;
    // A tile's key buffers: near-rotated keys where some pair is near; raw (CLAMP) or
    // far-rotated keys where some pair is far. Rotated keys come from the per-call
    // workspace (rotate_keys.cu), so no block repeats a rotation. Two stages: tile t+1
    // loads while tile t computes.
    auto issue = [&](int t, int st) {
        const int2 b = key_tile_bounds(a, t, BN);
        const TileClass c = classify(a, qmin, qmax, b.x, b.y);
        if (!c.far_all) load_tile<Tr>(sKn0 + st * Tr::TILE_HALVES, a.k_near, a, kvh, t * BN, tid);
        if (!c.near_all) {
            if (far_rotates_keys(a)) load_tile<Tr>(sKf0 + st * Tr::TILE_HALVES, a.k_far, a, kvh, t * BN, tid);
            else if (raw_k_stage) stage_rows<Tr::THREADS / BN>(raw_k0 + st * raw_k_stage, krows, a, kvh, t * BN, tid);
            else load_tile<Tr>(sKf0 + st * Tr::TILE_HALVES, kg, a, kvh, t * BN, tid);
        }
        if (raw_v_stage) stage_rows<Tr::THREADS / BN>(raw_v0 + st * raw_v_stage, vrows, a, kvh, t * BN, tid);
        else load_tile<Tr>(sV0 + st * Tr::TILE_HALVES, vg, a, kvh, t * BN, tid);
        if (tid < BN) {
            const int j = t * BN + tid;
            s_kpos[st * BN + tid] = j < a.n_kv ? k_position(a, j) : KPOS_INVALID;
        }
    };

    int kt = next_visible_tile(a, -1, 1, nt, BN, qmin, qmax), pb = 0;
    if (kt < nt) issue(kt, 0);
    cp_async_commit();

    while (kt < nt) {
        const int2 kb = key_tile_bounds(a, kt, BN);
        const TileClass tc = classify(a, qmin, qmax, kb.x, kb.y);
        const bool need_mask = tile_needs_mask(a, kt, BN, kb, qmin, qmax);
        const int * kp_s = s_kpos + pb * BN;
        const half * sKr = sKn0 + pb * Tr::TILE_HALVES;
        const half * far_k = sKf0 + pb * Tr::TILE_HALVES;
        const half * sV = sV0 + pb * Tr::TILE_HALVES;
        const int kn = next_visible_tile(a, kt, 1, nt, BN, qmin, qmax);
        if (kn < nt) issue(kn, pb ^ 1);  // that stage was released by the last barrier
        cp_async_commit();
        cp_async_wait<1>();  // this tile's group
        __syncthreads();
        if constexpr (STAGED) {  // raw tiles to f16, in this tile's stage (uniform branches)
            const bool raw_k = raw_k_stage && !tc.near_all, raw_v = raw_v_stage != 0;
            if (raw_k)
                convert_staged_rows<D, SD>(sKf0 + pb * Tr::TILE_HALVES, raw_k0 + pb * raw_k_stage, krows, a, kvh,
                                           kt * BN, BN, tid, Tr::THREADS);
            if (raw_v)
                convert_staged_rows<D, SD>(sV0 + pb * Tr::TILE_HALVES, raw_v0 + pb * raw_v_stage, vrows, a, kvh,
                                           kt * BN, BN, tid, Tr::THREADS);
            if (raw_k || raw_v) __syncthreads();
        }

        float s[NB][4];
        if (tc.far_all) {
            qk_tile<Tr>(s, qf, far_k, lane);
        } else {
            qk_tile<Tr>(s, qn, sKr, lane);
            if (!tc.near_all) {  // the band: far scores replace near ones where the pair is far
#pragma unroll
                for (int np = 0; np < NB / 2; ++np) {
                    float t2[2][4] = {};
                    qk_16keys<D, SD>(t2[0], t2[1], qf, far_k + np * 16 * SD, lane);
#pragma unroll
                    for (int hb = 0; hb < 2; ++hb)
                        take_far_scores(s[2 * np + hb], t2[hb], a, kp_s + (2 * np + hb) * 8, qp, tq);
                }
            }
        }
        if (need_mask) mask_scores<NB>(s, a, kp_s, qp, tq);
        online_softmax_tile<NB, D / 8>(s, m_r, l_r, o);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) pv_16keys<D, SD>(o, s[2 * kk], s[2 * kk + 1], sV + kk * 16 * SD, lane);
        __syncthreads();  // every warp is done with this stage
        kt = kn;
        pb ^= 1;
    }
    cp_async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float l = quad_row_sum(l_r[h]);
        const float inv = l > 0.f ? 1.f / l : 0.f;  // no visible key: zeros
        const int r = warp * 16 + g + 8 * h;
        if (r < rows) {
            float * orow = a.out + ((size_t) (q0 + r) * a.n_head + head) * D;
#pragma unroll
            for (int nb = 0; nb < D / 8; ++nb)
                *reinterpret_cast<float2 *>(orow + nb * 8 + 2 * tq) =
                    make_float2(o[nb][2 * h] * inv, o[nb][2 * h + 1] * inv);
        }
    }
}

template <int D, typename T> cudaError_t launch(const AttnArgs & a, cudaStream_t stream) {
    using Tr = PrefillTraits<D>;
    auto kernel = prefill_kernel<D, T>;
    const size_t smem = std::is_same<T, StagedKV>::value ? Tr::staged_smem(a) : Tr::SMEM;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
    if (err != cudaSuccess) return err;
    const dim3 grid((a.n_q + Tr::BLOCK_M - 1) / Tr::BLOCK_M, a.n_head);
    kernel<<<grid, Tr::THREADS, smem, stream>>>(a);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_prefill(const AttnArgs & a, int head_dim, cudaStream_t stream) {
    return HEADDIM_SWITCH(head_dim, [&] {
        return KV_PATH_SWITCH(a.k_type, a.v_type, [&] { return launch<kHeadDim, kv_t>(a, stream); });
    });
}

}  // namespace rerope_cuda
