// Decode attention (flash-decoding) for f32 K/V, in f32 on the CUDA cores: few queries,
// long key axis (f16 K/V runs on tensor cores instead: decode_mma.cu).
//
// Grid: (split of the key axis, KV head, chunk of query rows). A block reads its K/V
// head's slice once for all rows of the head's query group (n_q x n_head/n_head_kv
// rows), streams keys through a per-lane cp.async ring, rotates a key in registers only
// where the near path (or a leaky / group far path) needs it, and keeps an online softmax
// per row (softmax.cuh). Warps merge at the end (decode_split.cuh); decode_reduce.cu
// merges the splits.
#include <math.h>

#include "cp_async.cuh"
#include "decode_split.cuh"
#include "dispatch.cuh"
#include "launch.cuh"
#include "rotary.cuh"
#include "softmax.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

// 8 consecutive K/V elements (32 bytes), read from the lane's smem slot.
__device__ __forceinline__ void load8_shared(const float * p, float (&x)[8]) {
    const float4 a = reinterpret_cast<const float4 *>(p)[0];
    const float4 b = reinterpret_cast<const float4 *>(p)[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

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
    if (lr.rope_mode == GGML_REROPE_MODE_NEOX) {  // (m, m + n_rot/2)
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

template <int D>
__global__ void __launch_bounds__(DecodeF32Traits<D>::THREADS, DecodeF32Traits<D>::MIN_BLOCKS)
    decode_f32_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan, float * work) {
    using Tr = DecodeF32Traits<D>;
    constexpr int LPK = Tr::LPK, KPW = Tr::KPW, U = Tr::U, MR = Tr::MAX_ROWS, W = Tr::WARPS;
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int slot = lane / LPK, d0 = (lane % LPK) * 8;
    float * scratch = reinterpret_cast<float *>(smem + Tr::OFF_SCRATCH) + warp * KPW * D;
    const int split = blockIdx.x, kvh = blockIdx.y, r0 = blockIdx.z * MR;
    const int nrows = min(MR, plan.rows - r0);
    const float * kg = static_cast<const float *>(a.k);
    const float * vg = static_cast<const float *>(a.v);

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
    constexpr int PIECE = Tr::PIECE;  // bytes per lane per key row
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
                const bool nr = key_is_near(a, qp[r], kp[u]);
                any_near |= nr, any_far |= !nr;
            }
            float x[8], kf[8];
            load8_shared(reinterpret_cast<const float *>(slot_k(st, u)), x);
#pragma unroll
            for (int dd = 0; dd < 8; ++dd) kf[dd] = x[dd];
            if (far_rotates_keys(a) && __any_sync(0xffffffffu, valid && any_far))
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
                } else if (key_is_near(a, qp[r], kp[u])) {
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
                sc[u][r] = key_is_masked(a, qp[r], kp[u]) ? -INFINITY : s;
            }
        }
        // Online softmax over the U keys of this slot, then P.V.
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            float mx = m[r];
#pragma unroll
            for (int u = 0; u < U; ++u) mx = fmaxf(mx, sc[u][r]);
            float alpha;
            const float exp_base = softmax_raise_max(m[r], mx, alpha);
            l[r] *= alpha;
#pragma unroll
            for (int dd = 0; dd < 8; ++dd) acc[r][dd] *= alpha;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float p = exp2f(sc[u][r] - exp_base);
                l[r] += p;
                float v[8];
                load8_shared(reinterpret_cast<const float *>(slot_v(st, u)), v);
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
            float ws, wo;
            const float mm = softmax_merge_weights(m[r], mo, ws, wo);
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

template <int D> cudaError_t launch(const AttnArgs & a, const DecodePlan & plan, float * work, cudaStream_t stream) {
    using Tr = DecodeF32Traits<D>;
    auto kernel = decode_f32_kernel<D>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) Tr::SMEM);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(plan.n_split, a.n_head_kv, plan.row_chunks), Tr::THREADS, Tr::SMEM, stream>>>(a, plan, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    return launch_decode_reduce(a, plan, D, work, stream);
}

}  // namespace

cudaError_t launch_decode_f32(const AttnArgs & a, const DecodePlan & plan, int head_dim, float * work,
                              cudaStream_t stream) {
    return HEADDIM_SWITCH(head_dim, [&] { return launch<kHeadDim>(a, plan, work, stream); });
}

}  // namespace rerope_cuda
