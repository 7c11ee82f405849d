// Decode attention (flash-decoding): few queries, long key axis.
//
// Grid: (split of the key axis, KV head, chunk of query rows). A block reads its K/V
// head's slice once for all rows of the head's query group (n_q x n_head/n_head_kv
// rows), streams key tiles through a cp.async pipeline, rotates a tile in shared
// memory only where the near path (or a leaky / group far path) needs it, and keeps
// an online softmax per row. A second kernel merges the splits.
#include <math.h>

#include "launch.cuh"
#include "rotary.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

template <typename T> __device__ __forceinline__ void load8(const T * p, float (&x)[8]);
template <> __device__ __forceinline__ void load8<half>(const half * p, float (&x)[8]) {
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __half2 * h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        x[2 * i] = f.x;
        x[2 * i + 1] = f.y;
    }
}
template <> __device__ __forceinline__ void load8<float>(const float * p, float (&x)[8]) {
    const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

template <typename T> __device__ __forceinline__ float4 load4(const T * p);
template <> __device__ __forceinline__ float4 load4<half>(const half * p) {
    const uint2 u = *reinterpret_cast<const uint2 *>(p);
    const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
template <> __device__ __forceinline__ float4 load4<float>(const float * p) {
    return *reinterpret_cast<const float4 *>(p);
}

// dot(q row (f32, smem), key row (T, smem)) for two query rows at once.
template <int D, typename T>
__device__ __forceinline__ void dot2(const float * q0, const float * q1, const T * k, float & s0, float & s1) {
#pragma unroll 4
    for (int d = 0; d < D; d += 8) {
        float x[8];
        load8<T>(k + d, x);
        const float4 a0 = *reinterpret_cast<const float4 *>(q0 + d), a1 = *reinterpret_cast<const float4 *>(q0 + d + 4);
        const float4 b0 = *reinterpret_cast<const float4 *>(q1 + d), b1 = *reinterpret_cast<const float4 *>(q1 + d + 4);
        s0 += a0.x * x[0] + a0.y * x[1] + a0.z * x[2] + a0.w * x[3] + a1.x * x[4] + a1.y * x[5] + a1.z * x[6] +
              a1.w * x[7];
        s1 += b0.x * x[0] + b0.y * x[1] + b0.z * x[2] + b0.w * x[3] + b1.x * x[4] + b1.y * x[5] + b1.z * x[6] +
              b1.w * x[7];
    }
}

template <int D, typename T>
__global__ void __launch_bounds__(128) decode_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan,
                                                     float * work) {
    using Tr = DecodeTraits<D, T>;
    constexpr int KEYS = Tr::KEYS, SD = Tr::SD, MR = Tr::MAX_ROWS, ST = Tr::STAGES;
    constexpr int TPR = D / 4, RPP = Tr::THREADS / TPR, NPASS = MR / RPP;
    extern __shared__ __align__(16) unsigned char smem[];
    double * s_theta = reinterpret_cast<double *>(smem + Tr::OFF_THETA);
    float * sQn = reinterpret_cast<float *>(smem + Tr::OFF_QN);
    float * sQf = reinterpret_cast<float *>(smem + Tr::OFF_QF);
    float * sP = reinterpret_cast<float *>(smem + Tr::OFF_P);
    float * s_alpha = reinterpret_cast<float *>(smem + Tr::OFF_ALPHA);
    int * s_qpos = reinterpret_cast<int *>(smem + Tr::OFF_QPOS);
    int * s_kpos = reinterpret_cast<int *>(smem + Tr::OFF_KPOS);
    T * sK = reinterpret_cast<T *>(smem + Tr::OFF_K);
    T * sV = reinterpret_cast<T *>(smem + Tr::OFF_V);
    T * sKr = reinterpret_cast<T *>(smem + Tr::OFF_KR);
    T * sKf = reinterpret_cast<T *>(smem + Tr::OFF_KF);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int split = blockIdx.x, kvh = blockIdx.y;
    const int r0 = blockIdx.z * MR;
    const int nrows = min(MR, plan.rows - r0);
    const T * kg = static_cast<const T *>(a.k);
    const T * vg = static_cast<const T *>(a.v);

    for (int i = tid; i < a.n_rot / 2; i += Tr::THREADS) s_theta[i] = a.theta[i];
    if (tid < MR) s_qpos[tid] = q_position(a, (r0 + min(tid, nrows - 1)) / a.group);
    __syncthreads();
    int qmin = s_qpos[0], qmax = s_qpos[0];
    for (int r = 1; r < MR; ++r) qmin = min(qmin, s_qpos[r]), qmax = max(qmax, s_qpos[r]);

    // Query rows of this block, rotated for both paths, pre-scaled, in f32.
    for (int idx = tid; idx < MR * (D / 2); idx += Tr::THREADS) {
        const int r = idx / (D / 2), u = idx % (D / 2);
        int da, db;
        unit_dims(u, a.n_rot, a.rope_mode, da, db);
        float xa = 0.f, xb = 0.f;
        const int i = s_qpos[r];
        if (r < nrows) {
            const int row = r0 + r;
            const float * qr = a.q + ((size_t) (row / a.group) * a.n_head + kvh * a.group + row % a.group) * D;
            xa = qr[da];
            xb = qr[db];
        }
        const float f = query_factor(a, i);
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
        sQn[r * D + da] = na * f;
        sQn[r * D + db] = nb * f;
        sQf[r * D + da] = fa * f;
        sQf[r * D + db] = fb * f;
    }

    const int t_begin = split * (plan.keys_per_split / KEYS);
    const int t_end = min((a.n_kv + KEYS - 1) / KEYS, t_begin + plan.keys_per_split / KEYS);
    auto next_tile = [&](int t) {
        for (++t; t < t_end; ++t) {
            const int2 b = key_tile_bounds(a, t, KEYS);
            if (!(a.causal && b.x > qmax)) break;
        }
        return t;
    };
    auto issue = [&](int t, int st) {
        for (int idx = tid; idx < KEYS * Tr::CHUNKS; idx += Tr::THREADS) {
            const int r = idx / Tr::CHUNKS, c = idx % Tr::CHUNKS;
            const int j = t * KEYS + r;
            const size_t off = ((size_t) min(j, a.n_kv - 1) * a.n_head_kv + kvh) * D + c * (16 / sizeof(T));
            const int bytes = j < a.n_kv ? 16 : 0;
            cp_async16(sK + st * Tr::TILE + r * SD + c * (16 / sizeof(T)), kg + off, bytes);
            cp_async16(sV + st * Tr::TILE + r * SD + c * (16 / sizeof(T)), vg + off, bytes);
        }
        if (tid < KEYS) {
            const int j = t * KEYS + tid;
            s_kpos[st * KEYS + tid] = j < a.n_kv ? k_position(a, j) : KPOS_INVALID;
        }
    };

    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};  // rows warp, warp + 4 (softmax warps)
    float acc[NPASS][4] = {};
    const int c4 = (tid % TPR) * 4, rb = tid / TPR;

    int t_issue = next_tile(t_begin - 1), t_cur = t_issue;
    for (int s = 0; s < ST - 1; ++s) {
        if (t_issue < t_end) {
            issue(t_issue, s);
            t_issue = next_tile(t_issue);
        }
        cp_async_commit();
    }
    for (int n = 0; t_cur < t_end; ++n, t_cur = next_tile(t_cur)) {
        if (t_issue < t_end) {
            issue(t_issue, (n + ST - 1) % ST);
            t_issue = next_tile(t_issue);
        }
        cp_async_commit();
        cp_async_wait<ST - 1>();
        __syncthreads();

        const int st = n % ST;
        const T * k_raw = sK + st * Tr::TILE;
        const T * v_t = sV + st * Tr::TILE;
        const int * kp_s = s_kpos + st * KEYS;
        const int2 kb = key_tile_bounds(a, t_cur, KEYS);
        const TileClass tc = classify(a, qmin, qmax, kb.x, kb.y);
        const bool need_mask = (t_cur + 1) * KEYS > a.n_kv || (a.causal && kb.y > qmin);
        const bool rot_near = !tc.far_all, rot_far = !tc.near_all && a.far_mode != 0;
        if (rot_near)
            rotate_rows<D>(k_raw, SD, sKr, SD, KEYS, [&](int r) { return (double) kp_s[r]; }, s_theta, a.n_rot,
                           a.rope_mode, tid, Tr::THREADS);
        if (rot_far)
            rotate_rows<D>(k_raw, SD, sKf, SD, KEYS, [&](int r) { return far_k_pos(a, kp_s[r]); }, s_theta,
                           a.n_rot, a.rope_mode, tid, Tr::THREADS);
        if (rot_near || rot_far) __syncthreads();

        // Scores: thread = (key, row pair).
        {
            const int key = tid % KEYS, ra = tid / KEYS, rbb = ra + 4;
            const int kp = kp_s[key];
            const T * k_far = (a.far_mode == 0 ? k_raw : sKf) + key * SD;
            float sn0 = 0.f, sn1 = 0.f, sf0 = 0.f, sf1 = 0.f;
            if (!tc.far_all) dot2<D, T>(sQn + ra * D, sQn + rbb * D, sKr + key * SD, sn0, sn1);
            if (!tc.near_all) dot2<D, T>(sQf + ra * D, sQf + rbb * D, k_far, sf0, sf1);
            float sc[2] = {sn0, sn1};
            const float sfv[2] = {sf0, sf1};
            const int rr[2] = {ra, rbb};
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int qp = s_qpos[rr[h]];
                if (tc.far_all || (!tc.near_all && (long long) qp - kp >= a.window)) sc[h] = sfv[h];
                if (need_mask && (kp == KPOS_INVALID || (a.causal && kp > qp))) sc[h] = -INFINITY;
                sP[rr[h] * KEYS + key] = sc[h];
            }
        }
        __syncthreads();
        // Online softmax: warp w owns rows w and w + 4, one key per lane.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp + 4 * h;
            const float sv = sP[r * KEYS + lane];
            float mx = sv;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_new = fmaxf(m_r[h], mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float p = exp2f(sv - m_use);
            float sum = p;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            const float alpha = exp2f(m_r[h] - m_use);
            l_r[h] = l_r[h] * alpha + sum;
            m_r[h] = m_new;
            sP[r * KEYS + lane] = p;
            if (lane == 0) s_alpha[r] = alpha;
        }
        __syncthreads();
        // P.V: thread = (4 dims, rows rb + RPP * i).
#pragma unroll
        for (int i = 0; i < NPASS; ++i) {
            const float al = s_alpha[rb + RPP * i];
            acc[i][0] *= al, acc[i][1] *= al, acc[i][2] *= al, acc[i][3] *= al;
        }
#pragma unroll 8
        for (int key = 0; key < KEYS; ++key) {
            const float4 v = load4<T>(v_t + key * SD + c4);
#pragma unroll
            for (int i = 0; i < NPASS; ++i) {
                const float p = sP[(rb + RPP * i) * KEYS + key];
                acc[i][0] += p * v.x, acc[i][1] += p * v.y, acc[i][2] += p * v.z, acc[i][3] += p * v.w;
            }
        }
        __syncthreads();  // stage st and sP are reused next
    }
    cp_async_wait<0>();

    // Partial results of this split (unnormalised), merged by reduce_kernel.
    const size_t slot = ((size_t) split * a.n_head_kv + kvh) * plan.rows + r0;
    float * part_o = work + slot * D;
    float * part_ml = work + (size_t) gridDim.x * a.n_head_kv * plan.rows * D + slot * 2;
#pragma unroll
    for (int i = 0; i < NPASS; ++i) {
        const int r = rb + RPP * i;
        if (r < nrows)
            *reinterpret_cast<float4 *>(part_o + (size_t) r * D + c4) =
                make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    }
    if (lane == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp + 4 * h;
            if (r < nrows) part_ml[2 * r] = m_r[h], part_ml[2 * r + 1] = l_r[h];
        }
    }
}

// out row = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s over the splits.
template <int D>
__global__ void reduce_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan, const float * work) {
    const int r = blockIdx.x, kvh = blockIdx.y, d = threadIdx.x;
    const int n_split = plan.n_split;
    const float * part_ml = work + (size_t) n_split * a.n_head_kv * plan.rows * D;
    float M = -INFINITY;
    for (int s = 0; s < n_split; ++s) M = fmaxf(M, part_ml[(((size_t) s * a.n_head_kv + kvh) * plan.rows + r) * 2]);
    float num = 0.f, den = 0.f;
    if (M != -INFINITY) {
        for (int s = 0; s < n_split; ++s) {
            const size_t slot = ((size_t) s * a.n_head_kv + kvh) * plan.rows + r;
            const float w = exp2f(part_ml[slot * 2] - M);
            num += w * work[slot * D + d];
            den += w * part_ml[slot * 2 + 1];
        }
    }
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
    reduce_kernel<D><<<dim3(plan.rows, a.n_head_kv), D, 0, stream>>>(a, plan, work);
    return cudaGetLastError();
}

__global__ void key_bounds_kernel(const int32_t * k_pos, int n_kv, int tile, int n_tiles, int2 * bounds) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tiles) return;
    int lo = KPOS_INVALID, hi = -KPOS_INVALID - 1;
    for (int j = t * tile; j < min(n_kv, (t + 1) * tile); ++j) lo = min(lo, k_pos[j]), hi = max(hi, k_pos[j]);
    bounds[t] = make_int2(lo, hi);
}

}  // namespace

int decode_key_tile() { return DecodeTraits<64, half>::KEYS; }

DecodePlan plan_decode(const AttnArgs & a, int head_dim, int sm_count) {
    constexpr int KEYS = DecodeTraits<64, half>::KEYS, MR = DecodeTraits<64, half>::MAX_ROWS;
    DecodePlan p;
    p.rows = a.n_q * a.group;
    p.row_chunks = (p.rows + MR - 1) / MR;
    const int tiles = (a.n_kv + KEYS - 1) / KEYS;
    // About four blocks per multiprocessor (two resident, two waves) over heads x row chunks.
    const long long per_split = (long long) a.n_head_kv * p.row_chunks;
    long long want = (4LL * (sm_count > 0 ? sm_count : 1) + per_split - 1) / per_split;
    if (want < 1) want = 1;
    if (want > tiles) want = tiles;
    const int tiles_per_split = (int) ((tiles + want - 1) / want);
    p.keys_per_split = tiles_per_split * KEYS;
    p.n_split = (tiles + tiles_per_split - 1) / tiles_per_split;
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

cudaError_t launch_key_bounds(const int32_t * k_pos, int n_kv, int tile, int2 * bounds, cudaStream_t stream) {
    const int n_tiles = (n_kv + tile - 1) / tile;
    key_bounds_kernel<<<(n_tiles + 127) / 128, 128, 0, stream>>>(k_pos, n_kv, tile, n_tiles, bounds);
    return cudaGetLastError();
}

}  // namespace rerope_cuda
