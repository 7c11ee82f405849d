// Decode attention (flash-decoding): few queries, long key axis.
//
// Grid: (split of the key axis, KV head, chunk of query rows). A block reads its K/V
// head's slice once for all rows of the head's query group (n_q x n_head/n_head_kv
// rows), streams key tiles through a cp.async pipeline, rotates a tile in shared
// memory only where the near path (or a leaky / group far path) needs it, and keeps
// an online softmax per row. A second kernel merges the splits.
#include <math.h>

#include "decode_split.cuh"
#include "launch.cuh"
#include "rotary.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

// 8 consecutive K/V elements (16 bytes of f16, 32 of f32), read from the lane's smem slot.
template <typename T> struct Raw8;
template <> struct Raw8<half> {
    uint4 u;
    __device__ __forceinline__ void load_shared(const half * p) { u = *reinterpret_cast<const uint4 *>(p); }
    __device__ __forceinline__ void to_float(float (&x)[8]) const {
        const __half2 * h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(h[i]);
            x[2 * i] = f.x, x[2 * i + 1] = f.y;
        }
    }
};
template <> struct Raw8<float> {
    float4 a, b;
    __device__ __forceinline__ void load_shared(const float * p) {
        a = reinterpret_cast<const float4 *>(p)[0];
        b = reinterpret_cast<const float4 *>(p)[1];
    }
    __device__ __forceinline__ void to_float(float (&x)[8]) const {
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    }
};

// A lane's view of the rotation: its 8 dims start at d0; thetas sit in shared memory.
// Pair indices are recomputed where used (rarely: near keys, leaky / group far keys), to
// keep registers for the loads in flight.
struct LaneRot {
    int d0, n_rot, rope_mode;
    const double * theta;
};

// Pair of dimension d: theta index (-1: unrotated), the partner, and whether d is x_a.
__device__ __forceinline__ int dim_pair(const LaneRot & lr, int d, int & partner, bool & first) {
    const int half_rot = lr.n_rot / 2;
    if (d >= lr.n_rot) {
        partner = d, first = true;
        return -1;
    }
    if (lr.rope_mode == 2) {  // NEOX: (m, m + n_rot/2)
        first = d < half_rot;
        partner = first ? d + half_rot : d - half_rot;
        return first ? d : d - half_rot;
    }
    partner = d ^ 1, first = (d & 1) == 0;  // NORM: (2m, 2m+1)
    return d / 2;
}

// y = R_pos x on this lane's 8 dims; xp holds each dim's pair partner.
__device__ __forceinline__ void rotate8(const LaneRot & lr, double pos, const float (&x)[8], const float (&xp)[8],
                                        float (&y)[8]) {
#pragma unroll
    for (int dd = 0; dd < 8; ++dd) {
        int partner;
        bool first;
        const int m = dim_pair(lr, lr.d0 + dd, partner, first);
        if (m < 0) {
            y[dd] = x[dd];
            continue;
        }
        float c, s;
        rot_cos_sin(pos, lr.theta[m], c, s);
        y[dd] = first ? x[dd] * c - xp[dd] * s : xp[dd] * s + x[dd] * c;
    }
}

// Rotation of a warp's keys through its scratch (partners may live in other lanes).
// Called by the whole warp (warp-uniform condition).
template <int D>
__device__ __forceinline__ void rotate_key(float * scratch, int slot, const LaneRot & lr, double pos,
                                           const float (&x)[8], float (&y)[8]) {
    float * row = scratch + slot * D;
    *reinterpret_cast<float4 *>(row + lr.d0) = make_float4(x[0], x[1], x[2], x[3]);
    *reinterpret_cast<float4 *>(row + lr.d0 + 4) = make_float4(x[4], x[5], x[6], x[7]);
    __syncwarp();
    float xp[8];
#pragma unroll
    for (int dd = 0; dd < 8; ++dd) {
        int partner;
        bool first;
        dim_pair(lr, lr.d0 + dd, partner, first);
        xp[dd] = row[partner];
    }
    __syncwarp();
    rotate8(lr, pos, x, xp, y);
}

template <int D, typename T>
__global__ void __launch_bounds__(DecodeTraits<D, T>::THREADS, DecodeTraits<D, T>::MIN_BLOCKS) decode_kernel(const __grid_constant__ AttnArgs a,
                                                                           const DecodePlan plan, float * work) {
    using Tr = DecodeTraits<D, T>;
    constexpr int LPK = Tr::LPK, KPW = Tr::KPW, U = Tr::U, MR = Tr::MAX_ROWS, W = Tr::WARPS;
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int slot = lane / LPK, d0 = (lane % LPK) * 8;
    float * scratch = reinterpret_cast<float *>(smem + Tr::OFF_SCRATCH) + warp * KPW * D;
    const int split = blockIdx.x, kvh = blockIdx.y, r0 = blockIdx.z * MR;
    const int nrows = min(MR, plan.rows - r0);
    const T * kg = static_cast<const T *>(a.k);
    const T * vg = static_cast<const T *>(a.v);

    double * s_theta = reinterpret_cast<double *>(smem + Tr::OFF_THETA);
    for (int i = tid; i < a.n_rot / 2; i += Tr::THREADS) s_theta[i] = a.theta[i];
    __syncthreads();
    const LaneRot lr = {d0, a.n_rot, a.rope_mode, s_theta};

    // This lane's 8 dims of each query row, rotated for both paths and pre-scaled. The
    // far rows stay in registers (most keys of a long context are far); the near rows go
    // to shared memory, read only for keys within the window.
    float * s_qn = reinterpret_cast<float *>(smem + Tr::OFF_QN);
    int qp[MR];
    float qf[MR][8];
#pragma unroll
    for (int r = 0; r < MR; ++r) {
        const int row = r0 + min(r, nrows - 1);
        const int qi = row / a.group;
        qp[r] = q_position(a, qi);
        const float * qrow = a.q + ((size_t) qi * a.n_head + kvh * a.group + row % a.group) * D;
        float x[8], xp[8];
#pragma unroll
        for (int dd = 0; dd < 8; ++dd) {
            int partner;
            bool first;
            dim_pair(lr, d0 + dd, partner, first);
            x[dd] = qrow[d0 + dd], xp[dd] = qrow[partner];
        }
        const float f = query_factor(a, qp[r]);
        float qn[8];
        rotate8(lr, (double) qp[r], x, xp, qn);
        rotate8(lr, far_q_pos(a, qp[r]), x, xp, qf[r]);
#pragma unroll
        for (int dd = 0; dd < 8; ++dd) qf[r][dd] *= f;
        if (slot == 0) {
#pragma unroll
            for (int dd = 0; dd < 8; ++dd) s_qn[r * D + d0 + dd] = qn[dd] * f;
        }
    }
    __syncthreads();

    float m[MR], l[MR], acc[MR][8];
#pragma unroll
    for (int r = 0; r < MR; ++r) {
        m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
        for (int dd = 0; dd < 8; ++dd) acc[r][dd] = 0.f;
    }

    const int j_begin = split * plan.keys_per_split;
    const int j_end = min(a.n_kv, j_begin + plan.keys_per_split);
    // Each lane copies its own 8 dims of its keys into its own slots of a STAGES-deep
    // ring (cp.async), and later reads back exactly those bytes: no barrier, and the
    // loads of the next iterations stay in flight while this one computes.
    constexpr int PIECE = 8 * (int) sizeof(T);  // bytes per lane per key row (16 or 32)
    unsigned char * ring = smem + Tr::OFF_RING + (size_t) tid * PIECE;
    auto slot_k = [&](int st, int u) { return ring + ((size_t) (st * U + u) * 2) * Tr::THREADS * PIECE; };
    auto slot_v = [&](int st, int u) { return slot_k(st, u) + (size_t) Tr::THREADS * PIECE; };
    const int n_iter = (j_end - j_begin + Tr::KEYS_PER_ITER - 1) / Tr::KEYS_PER_ITER;
    auto issue = [&](int it) {
        const int st = it % Tr::STAGES;
        const int base = j_begin + it * Tr::KEYS_PER_ITER;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + (u * W + warp) * KPW + slot;
            const int bytes = j < j_end ? 16 : 0;
            const size_t off = ((size_t) min(j, a.n_kv - 1) * a.n_head_kv + kvh) * D + d0;
#pragma unroll
            for (int c = 0; c < PIECE; c += 16) {
                cp_async16(slot_k(st, u) + c, reinterpret_cast<const unsigned char *>(kg + off) + c, bytes);
                cp_async16(slot_v(st, u) + c, reinterpret_cast<const unsigned char *>(vg + off) + c, bytes);
            }
        }
    };
#pragma unroll
    for (int it = 0; it < Tr::STAGES - 1; ++it) {
        if (it < n_iter) issue(it);
        cp_async_commit();
    }
    for (int it = 0; it < n_iter; ++it) {
        if (it + Tr::STAGES - 1 < n_iter) issue(it + Tr::STAGES - 1);
        cp_async_commit();
        cp_async_wait<Tr::STAGES - 1>();
        const int st = it % Tr::STAGES;
        const int base = j_begin + it * Tr::KEYS_PER_ITER;
        int kp[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + (u * W + warp) * KPW + slot;
            kp[u] = j < j_end ? k_position(a, j) : KPOS_INVALID;
        }
        float sc[U][MR];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const bool valid = kp[u] != KPOS_INVALID;
            bool any_near = false, any_far = false;
#pragma unroll
            for (int r = 0; r < MR; ++r) {
                const bool nr = (long long) qp[r] - kp[u] < a.window;
                any_near |= nr, any_far |= !nr;
            }
            float x[8], kf[8];
            Raw8<T> kr;
            kr.load_shared(reinterpret_cast<const T *>(slot_k(st, u)));
            kr.to_float(x);
#pragma unroll
            for (int dd = 0; dd < 8; ++dd) kf[dd] = x[dd];
            if (a.far_mode != 0 && __any_sync(0xffffffffu, valid && any_far))
                rotate_key<D>(scratch, slot, lr, far_k_pos(a, kp[u]), x, kf);
            const bool warp_near = __any_sync(0xffffffffu, valid && any_near);
            float kn[8];
            if (warp_near) rotate_key<D>(scratch, slot, lr, (double) kp[u], x, kn);
#pragma unroll
            for (int r = 0; r < MR; ++r) {
                float s = 0.f;
                if (!warp_near) {  // the common case at long context: every key far
#pragma unroll
                    for (int dd = 0; dd < 8; ++dd) s += qf[r][dd] * kf[dd];
                } else if ((long long) qp[r] - kp[u] < a.window) {
                    const float4 q0 = *reinterpret_cast<const float4 *>(s_qn + r * D + d0);
                    const float4 q1 = *reinterpret_cast<const float4 *>(s_qn + r * D + d0 + 4);
                    s = q0.x * kn[0] + q0.y * kn[1] + q0.z * kn[2] + q0.w * kn[3] + q1.x * kn[4] + q1.y * kn[5] +
                        q1.z * kn[6] + q1.w * kn[7];
                } else {
#pragma unroll
                    for (int dd = 0; dd < 8; ++dd) s += qf[r][dd] * kf[dd];
                }
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                const bool masked = !valid || (a.causal && kp[u] > qp[r]);
                sc[u][r] = masked ? -INFINITY : s;
            }
        }
        // Online softmax over the U keys of this slot, then P.V.
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            float mx = m[r];
#pragma unroll
            for (int u = 0; u < U; ++u) mx = fmaxf(mx, sc[u][r]);
            const float m_use = mx == -INFINITY ? 0.f : mx;
            const float alpha = exp2f(m[r] - m_use);
            m[r] = mx;
            l[r] *= alpha;
#pragma unroll
            for (int dd = 0; dd < 8; ++dd) acc[r][dd] *= alpha;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float p = exp2f(sc[u][r] - m_use);
                l[r] += p;
                float v[8];
                Raw8<T> vr;
                vr.load_shared(reinterpret_cast<const T *>(slot_v(st, u)));
                vr.to_float(v);
#pragma unroll
                for (int dd = 0; dd < 8; ++dd) acc[r][dd] += p * v[dd];
            }
        }
    }

    // Merge the key slots of the warp (lanes LPK apart), then the warps through smem.
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[r], o), lo = __shfl_xor_sync(0xffffffffu, l[r], o);
            const float mm = fmaxf(m[r], mo);
            const float mu = mm == -INFINITY ? 0.f : mm;
            const float ws = exp2f(m[r] - mu), wo = exp2f(mo - mu);
            l[r] = l[r] * ws + lo * wo;
            m[r] = mm;
#pragma unroll
            for (int dd = 0; dd < 8; ++dd)
                acc[r][dd] = acc[r][dd] * ws + __shfl_xor_sync(0xffffffffu, acc[r][dd], o) * wo;
        }
    }
    float * s_acc = reinterpret_cast<float *>(smem + Tr::OFF_ACC);
    float * s_ml = reinterpret_cast<float *>(smem + Tr::OFF_ML);
    if (slot == 0) {
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            float * dst = s_acc + (warp * MR + r) * D + d0;
            *reinterpret_cast<float4 *>(dst) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
            *reinterpret_cast<float4 *>(dst + 4) = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
            if (lane == 0) s_ml[(warp * MR + r) * 2] = m[r], s_ml[(warp * MR + r) * 2 + 1] = l[r];
        }
    }
    __syncthreads();
    write_split_partial<D, W, MR>(a, plan, split, kvh, r0, nrows, s_acc, s_ml, work, tid, Tr::THREADS);
}

// out row = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s over the splits. One block per
// (row, KV head): split weights first, cooperatively, into shared memory; then each
// thread (one output dim) sums over splits with independent loads in flight.
template <int D>
__global__ void __launch_bounds__(D) reduce_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan,
                                                   const float * work) {
    extern __shared__ float s_w[];  // [n_split] weights
    __shared__ float s_red[D / 32];
    const int r = blockIdx.x, kvh = blockIdx.y, d = threadIdx.x, lane = d % 32, warp = d / 32;
    const int n_split = plan.n_split;
    const size_t stride = (size_t) a.n_head_kv * plan.rows;  // slots between splits
    const size_t slot0 = (size_t) kvh * plan.rows + r;
    const float * part_ml = work + (size_t) n_split * stride * D;

    float mx = -INFINITY;
    for (int s = d; s < n_split; s += D) mx = fmaxf(mx, part_ml[(slot0 + s * stride) * 2]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) s_red[warp] = mx;
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < D / 32; ++w) M = fmaxf(M, s_red[w]);
    const float mu = M == -INFINITY ? 0.f : M;
    __syncthreads();
    float den = 0.f;
    for (int s = d; s < n_split; s += D) {
        const size_t sl = slot0 + s * stride;
        const float w = exp2f(part_ml[sl * 2] - mu);
        s_w[s] = w;
        den += w * part_ml[sl * 2 + 1];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
    if (lane == 0) s_red[warp] = den;
    __syncthreads();
    den = 0.f;
#pragma unroll
    for (int w = 0; w < D / 32; ++w) den += s_red[w];
    float num = 0.f;
#pragma unroll 8
    for (int s = 0; s < n_split; ++s) num += s_w[s] * work[(slot0 + s * stride) * D + d];
    const int qi = r / a.group, head = kvh * a.group + r % a.group;
    a.out[((size_t) qi * a.n_head + head) * D + d] = den > 0.f ? num / den : 0.f;
}

template <int D, typename T>
cudaError_t launch(const AttnArgs & a, const DecodePlan & plan, float * work, cudaStream_t stream) {
    using Tr = DecodeTraits<D, T>;
    auto kernel = decode_kernel<D, T>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) Tr::SMEM);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(plan.n_split, a.n_head_kv, plan.row_chunks), Tr::THREADS, Tr::SMEM, stream>>>(a, plan, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    return launch_decode_reduce(a, plan, D, work, stream);
}

__global__ void key_bounds_kernel(const int32_t * k_pos, int n_kv, int tile, int n_tiles, int2 * bounds) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tiles) return;
    int lo = KPOS_INVALID, hi = -KPOS_INVALID - 1;
    for (int j = t * tile; j < min(n_kv, (t + 1) * tile); ++j) lo = min(lo, k_pos[j]), hi = max(hi, k_pos[j]);
    bounds[t] = make_int2(lo, hi);
}

}  // namespace

DecodePlan plan_decode(const AttnArgs & a, int head_dim, int sm_count) {
    constexpr int G = DecodeTraits<64, half>::SPLIT_GRANULE, MR = DecodeTraits<64, half>::MAX_ROWS;
    DecodePlan p;
    p.rows = a.n_q * a.group;
    p.row_chunks = (p.rows + MR - 1) / MR;
    const int granules = (a.n_kv + G - 1) / G;
    // About eight blocks of 4 warps per multiprocessor over heads x row chunks x splits.
    const long long per_split = (long long) a.n_head_kv * p.row_chunks;
    long long want = (8LL * (sm_count > 0 ? sm_count : 1) + per_split - 1) / per_split;
    if (want < 1) want = 1;
    if (want > granules) want = granules;
    const int granules_per_split = (int) ((granules + want - 1) / want);
    p.keys_per_split = granules_per_split * G;
    p.n_split = (granules + granules_per_split - 1) / granules_per_split;
    (void) head_dim;
    return p;
}

size_t decode_workspace_floats(const DecodePlan & p, const AttnArgs & a, int head_dim) {
    return (size_t) p.n_split * a.n_head_kv * p.rows * (head_dim + 2);
}

cudaError_t launch_decode(const AttnArgs & a, const DecodePlan & plan, int head_dim, int kv_is_f16, float * work,
                          cudaStream_t stream) {
    if (head_dim == 64)
        return kv_is_f16 ? launch<64, half>(a, plan, work, stream) : launch<64, float>(a, plan, work, stream);
    return kv_is_f16 ? launch<128, half>(a, plan, work, stream) : launch<128, float>(a, plan, work, stream);
}

cudaError_t launch_decode_reduce(const AttnArgs & a, const DecodePlan & plan, int head_dim, const float * work,
                                 cudaStream_t stream) {
    const size_t smem = plan.n_split * sizeof(float);
    if (head_dim == 64)
        reduce_kernel<64><<<dim3(plan.rows, a.n_head_kv), 64, smem, stream>>>(a, plan, work);
    else
        reduce_kernel<128><<<dim3(plan.rows, a.n_head_kv), 128, smem, stream>>>(a, plan, work);
    return cudaGetLastError();
}

cudaError_t launch_key_bounds(const int32_t * k_pos, int n_kv, int tile, int2 * bounds, cudaStream_t stream) {
    const int n_tiles = (n_kv + tile - 1) / tile;
    key_bounds_kernel<<<(n_tiles + 127) / 128, 128, 0, stream>>>(k_pos, n_kv, tile, n_tiles, bounds);
    return cudaGetLastError();
}

}  // namespace rerope_cuda
