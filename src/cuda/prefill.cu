// Prefill attention: FlashAttention-2 on tensor cores, one fused pass for ReRoPE.
//
// Per (head, query tile) the block walks the key tiles. Each tile pair is classified
// from position ranges (traits.cuh / common.cuh):
//   near  (every i - j < w): S = (R_i q) . (R_j k)        -- key rotated in smem at j
//   far   (every i - j >= w): S = (R_far(i) q) . (R_far(j) k) -- CLAMP: raw key, query at w
//   mixed (the band around w): both, selected per element.
// so each score is computed once except in the band. The cache holds raw keys; each call
// rotates them once into a transient f16 workspace (rotate_keys.cu: O(n d), against the
// O(n^2 d) here) -- rotating every key tile in shared memory per query tile repeated that
// work n/64 times and ran 2.5x slower on the H100 (docs/gpu/bench_run1_v1kernels.log).
// Queries are rotated once per path, with lambda_i * scale * log2(e) folded in; the softmax
// is online and in base 2.
#include <math.h>

#include "launch.cuh"
#include "mma.cuh"
#include "rotary.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

// Issues the copy of rows j0 .. j0 + BLOCK_N - 1 of one K or V head into dst (f16).
// Half: cp.async (asynchronous, zero-fill past n_kv). Float: load, convert, store.
template <class Tr>
__device__ __forceinline__ void load_tile(half * dst, const half * src, const AttnArgs & a, int kvh, int j0,
                                          int tid) {
    constexpr int CH = Tr::D / 8;
    for (int idx = tid; idx < Tr::BLOCK_N * CH; idx += Tr::THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int j = j0 + r;
        const half * s = src + ((size_t) min(j, a.n_kv - 1) * a.n_head_kv + kvh) * Tr::D + c * 8;
        cp_async16(dst + r * Tr::SD + c * 8, s, j < a.n_kv ? 16 : 0);
    }
}

template <class Tr>
__device__ __forceinline__ void load_tile(half * dst, const float * src, const AttnArgs & a, int kvh, int j0,
                                          int tid) {
    constexpr int CH = Tr::D / 8;
    for (int idx = tid; idx < Tr::BLOCK_N * CH; idx += Tr::THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int j = j0 + r;
        float4 x0 = make_float4(0.f, 0.f, 0.f, 0.f), x1 = x0;
        if (j < a.n_kv) {
            const float4 * s =
                reinterpret_cast<const float4 *>(src + ((size_t) j * a.n_head_kv + kvh) * Tr::D + c * 8);
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

// s[nb] (8 key blocks of 8) = q (16 rows x D) . K^T for the warp's rows.
template <class Tr>
__device__ __forceinline__ void qk_tile(float (&s)[Tr::BLOCK_N / 8][4], const uint32_t (&q)[Tr::D / 16][4],
                                        const half * sk, int lane) {
#pragma unroll
    for (int nb = 0; nb < Tr::BLOCK_N / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
    for (int np = 0; np < Tr::BLOCK_N / 16; ++np) {
#pragma unroll
        for (int ks = 0; ks < Tr::D / 16; ++ks) {
            uint32_t b[4];
            const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
            const int dim = ks * 16 + ((lane / 8) % 2) * 8;
            ldsm_x4(b, sk + key * Tr::SD + dim);
            mma_16816(s[2 * np], q[ks], b[0], b[1]);
            mma_16816(s[2 * np + 1], q[ks], b[2], b[3]);
        }
    }
}

template <int D, typename T>
__global__ void __launch_bounds__(PrefillTraits<D>::THREADS, PrefillTraits<D>::MIN_BLOCKS) prefill_kernel(const __grid_constant__ AttnArgs a) {
    using Tr = PrefillTraits<D>;
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
    const T * kg = static_cast<const T *>(a.k);
    const T * vg = static_cast<const T *>(a.v);

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
    for (int idx = tid; idx < BM * (D / 2); idx += Tr::THREADS) {
        const int r = idx / (D / 2), u = idx % (D / 2);
        int da, db;
        unit_dims(u, a.n_rot, a.rope_mode, da, db);
        const int i = s_qpos[r];
        float xa = 0.f, xb = 0.f;
        if (r < rows) {
            const float * qr = a.q + ((size_t) (q0 + r) * a.n_head + head) * D;
            xa = qr[da];
            xb = qr[db];
        }
        const float f = s_qfac[r];
        float na = xa, nb = xb, fa = xa, fb = xb;
        if (u < a.n_rot / 2) {
            float c, s;
            rot_cos_sin((double) i, s_theta[u], c, s);
            na = xa * c - xb * s;
            nb = xa * s + xb * c;
            rot_cos_sin(far_q_pos(a, i), s_theta[u], c, s);
            fa = xa * c - xb * s;
            fb = xa * s + xb * c;
        }
        sQn[r * SD + da] = __float2half_rn(na * f);
        sQn[r * SD + db] = __float2half_rn(nb * f);
        sQf[r * SD + da] = __float2half_rn(fa * f);
        sQf[r * SD + db] = __float2half_rn(fb * f);
    }
    __syncthreads();
    uint32_t qn[D / 16][4], qf[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        const int off = (warp * 16 + lane % 16) * SD + ks * 16 + (lane / 16) * 8;
        ldsm_x4(qn[ks], sQn + off);
        ldsm_x4(qf[ks], sQf + off);
    }
    __syncthreads();

    const int g = lane / 4, tq = lane % 4;
    const int qp[2] = {s_qpos[warp * 16 + g], s_qpos[warp * 16 + g + 8]};
    float o[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};

    const int nt = (a.n_kv + BN - 1) / BN;
    auto next_tile = [&](int t) {
        for (++t; t < nt; ++t) {
            const int2 b = key_tile_bounds(a, t, BN);
            if (!(a.causal && b.x > qmax)) break;
        }
        return t;
    };
    // A tile's key buffers: near-rotated keys where some pair is near; raw (CLAMP) or
    // far-rotated keys where some pair is far. Rotated keys come from the per-call
    // workspace (rotate_keys.cu), so no block repeats a rotation. Two stages: tile t+1
    // loads while tile t computes.
    auto issue = [&](int t, int st) {
        const int2 b = key_tile_bounds(a, t, BN);
        const TileClass c = classify(a, qmin, qmax, b.x, b.y);
        if (!c.far_all) load_tile<Tr>(sKn0 + st * Tr::TILE_HALVES, a.k_near, a, kvh, t * BN, tid);
        if (!c.near_all) {
            if (a.far_mode == 0) load_tile<Tr>(sKf0 + st * Tr::TILE_HALVES, kg, a, kvh, t * BN, tid);
            else load_tile<Tr>(sKf0 + st * Tr::TILE_HALVES, a.k_far, a, kvh, t * BN, tid);
        }
        load_tile<Tr>(sV0 + st * Tr::TILE_HALVES, vg, a, kvh, t * BN, tid);
        if (tid < BN) {
            const int j = t * BN + tid;
            s_kpos[st * BN + tid] = j < a.n_kv ? k_position(a, j) : KPOS_INVALID;
        }
    };

    int kt = next_tile(-1), pb = 0;
    if (kt < nt) issue(kt, 0);
    cp_async_commit();

    while (kt < nt) {
        const int2 kb = key_tile_bounds(a, kt, BN);
        const TileClass tc = classify(a, qmin, qmax, kb.x, kb.y);
        const bool need_mask = (kt + 1) * BN > a.n_kv || (a.causal && kb.y > qmin);
        const int * kp_s = s_kpos + pb * BN;
        const half * sKr = sKn0 + pb * Tr::TILE_HALVES;
        const half * far_k = sKf0 + pb * Tr::TILE_HALVES;
        const half * sV = sV0 + pb * Tr::TILE_HALVES;
        const int kn = next_tile(kt);
        if (kn < nt) issue(kn, pb ^ 1);  // that stage was released by the last barrier
        cp_async_commit();
        cp_async_wait<1>();  // this tile's group
        __syncthreads();

        float s[NB][4];
        if (tc.far_all) {
            qk_tile<Tr>(s, qf, far_k, lane);
        } else {
            qk_tile<Tr>(s, qn, sKr, lane);
            if (!tc.near_all) {  // the band: far scores replace near ones where i - j >= w
#pragma unroll
                for (int np = 0; np < NB / 2; ++np) {
                    float t2[2][4] = {};
#pragma unroll
                    for (int ks = 0; ks < D / 16; ++ks) {
                        uint32_t b[4];
                        const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
                        const int dim = ks * 16 + ((lane / 8) % 2) * 8;
                        ldsm_x4(b, far_k + key * SD + dim);
                        mma_16816(t2[0], qf[ks], b[0], b[1]);
                        mma_16816(t2[1], qf[ks], b[2], b[3]);
                    }
#pragma unroll
                    for (int hb = 0; hb < 2; ++hb)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int col = (2 * np + hb) * 8 + 2 * tq + (e & 1);
                            if ((long long) qp[e >> 1] - kp_s[col] >= a.window) s[2 * np + hb][e] = t2[hb][e];
                        }
                }
            }
        }
        if (need_mask) {
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int kp = kp_s[nb * 8 + 2 * tq + (e & 1)];
                    if (kp == KPOS_INVALID || (a.causal && kp > qp[e >> 1])) s[nb][e] = -INFINITY;
                }
        }
        // Online softmax (base 2); l_r holds this thread's partial row sums.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * h], s[nb][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m_r[h], mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float alpha = exp2f(m_r[h] - m_use);
            float sum = 0.f;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
                s[nb][2 * h] = exp2f(s[nb][2 * h] - m_use);
                s[nb][2 * h + 1] = exp2f(s[nb][2 * h + 1] - m_use);
                sum += s[nb][2 * h] + s[nb][2 * h + 1];
            }
            l_r[h] = l_r[h] * alpha + sum;
            m_r[h] = m_new;
#pragma unroll
            for (int nb = 0; nb < D / 8; ++nb) {
                o[nb][2 * h] *= alpha;
                o[nb][2 * h + 1] *= alpha;
            }
        }

#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const uint32_t p[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                   pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                const int key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int dim = dp * 16 + (lane / 16) * 8;
                ldsm_x4_trans(b, sV + key * SD + dim);
                mma_16816(o[2 * dp], p, b[0], b[1]);
                mma_16816(o[2 * dp + 1], p, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with this stage
        kt = kn;
        pb ^= 1;
    }
    cp_async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float l = l_r[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
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
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) Tr::SMEM);
    if (err != cudaSuccess) return err;
    const dim3 grid((a.n_q + Tr::BLOCK_M - 1) / Tr::BLOCK_M, a.n_head);
    kernel<<<grid, Tr::THREADS, Tr::SMEM, stream>>>(a);
    return cudaGetLastError();
}

}  // namespace

int prefill_key_tile() { return PrefillTraits<64>::BLOCK_N; }

cudaError_t launch_prefill(const AttnArgs & a, int head_dim, int kv_is_f16, cudaStream_t stream) {
    if (head_dim == 64) return kv_is_f16 ? launch<64, half>(a, stream) : launch<64, float>(a, stream);
    return kv_is_f16 ? launch<128, half>(a, stream) : launch<128, float>(a, stream);
}

}  // namespace rerope_cuda
