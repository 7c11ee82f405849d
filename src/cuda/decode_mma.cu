// Decode attention on tensor cores, for f16 K/V (DecodeMmaTraits in traits.cuh) and staged
// K/V: bf16, q8_0, q4_0, mixed pairs (DecodeMmaStagedTraits; kv_staging.cuh).
//
// Grid: (split, KV head, chunk of 16 query rows). The rows of a KV head's group (n_q x
// n_head/n_head_kv) share every key, so they form one zero-padded m16 tile: each K/V head
// is read once for its whole group. Key tiles are dealt round-robin to every warp of the
// grid (warp w of split s takes tiles s*WARPS + w + k*n_split*WARPS; heuristics.cuh says
// why). Each warp loads its tiles with cp.async into its own ring, rotates a tile in shared
// memory only when a key is near (or the far mode rotates keys: leaky / group / chunk), and
// runs the same near / far / mixed scoring and online softmax as the prefill kernel. Warps
// merge at the end (decode_split.cuh); decode_reduce.cu merges the splits. Staged K/V: the ring
// holds raw tiles (fewer bytes a key: q8_0 8.5 bits, q4_0 4.5), converted to f16 tiles as each
// is used; keys stored Hadamard-rotated are undone there too, for the tiles that need the keys
// themselves (hadamard.cuh).
#include <math.h>
#include <stdint.h>

#include <type_traits>

#include "decode_split.cuh"
#include "dispatch.cuh"
#include "hadamard.cuh"
#include "kv_staging.cuh"
#include "launch.cuh"
#include "mma.cuh"
#include "rotary.cuh"
#include "softmax.cuh"
#include "traits.cuh"

namespace rerope_cuda {
namespace {

// Shared-memory layout of one block (traits.cuh), resolved for the call's types.
struct DecodeMmaLayout {
    size_t theta, qpos, warps, warp_bytes;  // theta: SIZE_MAX, read from the parameters
};

template <int D, typename KV> __device__ __forceinline__ DecodeMmaLayout decode_mma_layout(const AttnArgs & a) {
    if constexpr (std::is_same<KV, StagedKV>::value) {
        using Tr = DecodeMmaStagedTraits<D>;
        return {SIZE_MAX, Tr::OFF_QPOS, Tr::OFF_WARPS, Tr::warp_bytes(a)};
    } else {
        using Tr = DecodeMmaTraits<D>;
        return {Tr::OFF_THETA, Tr::OFF_QPOS, Tr::OFF_WARPS, Tr::WARP_BYTES};
    }
}

// KV: half (f16 K and V, copied straight into the ring) or StagedKV (raw tiles, converted).
template <int D, typename KV>
__global__ void __launch_bounds__(DecodeMmaTraits<D>::THREADS, std::is_same<KV, StagedKV>::value
                                                                   ? DecodeMmaTraits<D>::STAGED_MIN_BLOCKS
                                                                   : DecodeMmaTraits<D>::MIN_BLOCKS)
    decode_mma_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan, float * work) {
    using Tr = DecodeMmaTraits<D>;
    constexpr bool STAGED = std::is_same<KV, StagedKV>::value;
    constexpr int SD = Tr::SD, KEYS = Tr::KEYS, W = Tr::WARPS, ROWS = Tr::ROWS, TH = Tr::TILE_HALVES;
    constexpr int ST = STAGED ? Tr::RAW_STAGES : Tr::STAGES;  // tiles in flight per warp
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int split = blockIdx.x, kvh = blockIdx.y, r0 = blockIdx.z * ROWS;
    const int nrows = min(ROWS, plan.rows - r0);
    const DecodeMmaLayout L = decode_mma_layout<D, KV>(a);
    const double * s_theta = STAGED ? a.theta : reinterpret_cast<const double *>(smem + L.theta);
    int * s_qpos = reinterpret_cast<int *>(smem + L.qpos);
    unsigned char * wbase = smem + L.warps + warp * L.warp_bytes;
    // f16: [ST] K | [ST] V | near-rotated K | far-rotated K | key positions [ST].
    // Staged: K | V | key positions [ST] | raw [ST] (near keys rotate into the stage just
    // converted, far keys in place).
    half * sK0 = reinterpret_cast<half *>(wbase);
    half * sV0 = sK0 + (STAGED ? 1 : ST) * TH;
    half * sKr = sV0 + (STAGED ? 1 : ST) * TH;
    half * sKf = sKr + TH;
    int * s_kpos = reinterpret_cast<int *>(STAGED ? sKr : sKf + TH);
    unsigned char * raw0 = reinterpret_cast<unsigned char *>(s_kpos + ST * KEYS);
    const KvRows krows = key_rows(a), vrows = value_rows(a);
    const size_t raw_k_bytes = staged_bytes(krows, KEYS);
    size_t raw_stage = 0;
    if constexpr (STAGED) raw_stage = DecodeMmaStagedTraits<D>::raw_stage_bytes(a);
    const half * kg = static_cast<const half *>(a.k);
    const half * vg = static_cast<const half *>(a.v);

    if (!STAGED)
        for (int i = tid; i < a.n_rot / 2; i += Tr::THREADS) reinterpret_cast<double *>(smem + L.theta)[i] = a.theta[i];
    __shared__ float s_qfac[ROWS];  // lambda_i * scale * log2(e) per row, computed once
    if (tid < ROWS) {
        s_qpos[tid] = q_position(a, (r0 + min(tid, nrows - 1)) / a.group);
        s_qfac[tid] = query_factor(a, s_qpos[tid]);
    }
    __syncthreads();
    int qmin = s_qpos[0], qmax = s_qpos[0];
    for (int r = 1; r < ROWS; ++r) qmin = min(qmin, s_qpos[r]), qmax = max(qmax, s_qpos[r]);

    // Query rows (zero past nrows), rotated for both paths, pre-scaled, staged as f16.
    half * sQn = reinterpret_cast<half *>(smem + L.warps);
    half * sQf = sQn + ROWS * SD;
    stage_query_rows<D, SD>(
        a, ROWS, nrows,
        [&](int r) {
            const int row = r0 + r;
            return a.q + ((size_t) (row / a.group) * a.n_head + kvh * a.group + row % a.group) * D;
        },
        s_qpos, s_qfac, s_theta, sQn, sQf, tid, Tr::THREADS);
    __syncthreads();
    // Staged keys stored Hadamard-rotated (k_hadamard = B): far CLAMP scores read them as stored,
    // against Q q_far; a tile whose keys are needed themselves is undone as it is converted.
    const float h_scale = STAGED && a.k_hadamard ? rsqrtf((float) a.k_hadamard) : 1.f;
    if constexpr (STAGED) {
        if (a.k_hadamard && !far_rotates_keys(a)) {
            constexpr int QR = (ROWS + W - 1) / W;  // query rows a warp
            const int rq = warp * QR;
            if (rq < ROWS)
                hadamard_rows<D>(sQf + rq * SD, SD, sQf + rq * SD, SD, min(QR, ROWS - rq), a.k_hadamard, h_scale, lane);
            __syncthreads();
        }
    }
    uint32_t qn[D / 16][4], qf[D / 16][4];
    load_query_fragments<D, SD>(qn, sQn, lane);
    load_query_fragments<D, SD>(qf, sQf, lane);
    __syncthreads();  // the staging area belongs to the rings from here

    const int g = lane / 4, tq = lane % 4;
    const int qp[2] = {s_qpos[g], s_qpos[g + 8]};
    float o[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};

    // This warp's tiles: every t_step-th one, skipping those no query sees (causal future, dropped).
    const int t_end = (a.n_kv + KEYS - 1) / KEYS;
    const int t_step = gridDim.x * W;
    auto next_tile = [&](int t) { return next_visible_tile(a, t, t_step, t_end, KEYS, qmin, qmax); };
    auto issue = [&](int t, int st) {
        if constexpr (STAGED) {
            unsigned char * raw = raw0 + st * raw_stage;
            static_assert(KEYS * 2 == 32, "two lanes a row");
            stage_rows<2>(raw, krows, a, kvh, t * KEYS, lane);
            stage_rows<2>(raw + raw_k_bytes, vrows, a, kvh, t * KEYS, lane);
        } else {
            constexpr int CH = D / 8;
            for (int idx = lane; idx < KEYS * CH; idx += 32) {
                const int r = idx / CH, c = idx % CH;
                const int j = t * KEYS + r;
                const size_t off = ((size_t) min(j, a.n_kv - 1) * a.n_head_kv + kvh) * D + c * 8;
                const int bytes = j < a.n_kv ? 16 : 0;
                cp_async16(sK0 + st * TH + r * SD + c * 8, kg + off, bytes);
                cp_async16(sV0 + st * TH + r * SD + c * 8, vg + off, bytes);
            }
        }
        if (lane < KEYS) {
            const int j = t * KEYS + lane;
            s_kpos[st * KEYS + lane] = j < a.n_kv ? k_position(a, j) : KPOS_INVALID;
        }
    };

    int kt = next_tile(split * W + warp - t_step);  // this warp's first tile that some query may see
    int t_issue = kt;
#pragma unroll
    for (int st = 0; st < ST - 1; ++st) {
        if (t_issue < t_end) {
            issue(t_issue, st);
            t_issue = next_tile(t_issue);
        }
        cp_async_commit();
    }
    for (int n = 0; kt < t_end; ++n, kt = next_tile(kt)) {
        if (t_issue < t_end) {  // its stage was released by the __syncwarp closing the last tile
            issue(t_issue, (n + ST - 1) % ST);
            t_issue = next_tile(t_issue);
        }
        cp_async_commit();
        cp_async_wait<ST - 1>();
        __syncwarp();
        const int pb = n % ST;

        const int2 kb = key_tile_bounds(a, kt, KEYS);
        const TileClass tc = classify(a, qmin, qmax, kb.x, kb.y);
        const bool need_mask = tile_needs_mask(a, kt, KEYS, kb, qmin, qmax);
        const int * kp_s = s_kpos + pb * KEYS;
        half * k_raw;  // this tile's keys as stored (raw: unrotated by RoPE), in f16
        const half * sV;
        if constexpr (STAGED) {
            const unsigned char * raw = raw0 + pb * raw_stage;
            convert_staged_rows<D, SD>(sK0, raw, krows, a, kvh, kt * KEYS, KEYS, lane, 32);
            convert_staged_rows<D, SD>(sV0, raw + raw_k_bytes, vrows, a, kvh, kt * KEYS, KEYS, lane, 32);
            __syncwarp();
            k_raw = sK0, sV = sV0;
            sKr = reinterpret_cast<half *>(raw0 + pb * raw_stage);  // that stage is consumed
        } else {
            k_raw = sK0 + pb * TH, sV = sV0 + pb * TH;
        }
        const half * k_keys = k_raw;  // the keys themselves: near keys rotate from here
        if constexpr (STAGED) {
            if (a.k_hadamard && (far_rotates_keys(a) || !tc.far_all)) {
                half * dst = far_rotates_keys(a) ? k_raw : sKr;  // CLAMP: far scores keep the stored keys
                hadamard_rows<D>(k_raw, SD, dst, SD, KEYS, a.k_hadamard, h_scale, lane);
                __syncwarp();
                k_keys = dst;
            }
        }
        if (!tc.far_all)
            rotate_rows<D>(
                k_keys, SD, sKr, SD, KEYS, [&](int r) { return (double) kp_s[r]; }, s_theta, a.n_rot, a.rope_mode, lane,
                32);
        // Far LEAKY / GROUP / CHUNK keys; staged: in place, once the near copy is made (each lane rewrites
        // the very pairs it read, so the rotation needs no other order).
        half * far_dst = STAGED ? k_raw : sKf;
        if (!tc.near_all && far_rotates_keys(a)) {
            if (STAGED && !tc.far_all) __syncwarp();
            rotate_rows<D>(
                k_raw, SD, far_dst, SD, KEYS, [&](int r) { return far_k_pos(a, kp_s[r]); }, s_theta, a.n_rot,
                a.rope_mode, lane, 32);
        }
        if (!tc.far_all || (!tc.near_all && far_rotates_keys(a))) __syncwarp();
        const half * far_k = far_rotates_keys(a) ? far_dst : k_raw;

        // Scores of the 16 rows x 16 keys: two n8 blocks, near (s) and far (t2) as needed.
        float s[2][4] = {}, t2[2][4] = {};
        if (!tc.far_all) qk_16keys<D, SD>(s[0], s[1], qn, sKr, lane);
        if (!tc.near_all) qk_16keys<D, SD>(t2[0], t2[1], qf, far_k, lane);
        // Far scores where the pair is far, then the mask; one pass over the 8 elements.
#pragma unroll
        for (int nb = 0; nb < 2; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kp = kp_s[fragment_key(nb, e, tq)];
                const int q = qp[e >> 1];
                if (tc.far_all || (!tc.near_all && !key_is_near(a, q, kp))) s[nb][e] = t2[nb][e];
                if (need_mask && key_is_masked(a, q, kp)) s[nb][e] = -INFINITY;
            }
        online_softmax_tile<2, D / 8>(s, m_r, l_r, o);
        pv_16keys<D, SD>(o, s[0], s[1], sV, lane);
        __syncwarp();  // this stage may be refilled next
    }
    cp_async_wait<0>();

    // Merge the warps (their partial rows in the rings' space), then write this split's partial.
    __syncthreads();
    float * s_o = reinterpret_cast<float *>(smem + L.warps);  // [WARPS][ROWS][D]
    float * s_ml = s_o + W * ROWS * D;                                // [WARPS][ROWS][2]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float l = quad_row_sum(l_r[h]);
        const int r = g + 8 * h;
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
            *reinterpret_cast<float2 *>(s_o + (warp * ROWS + r) * D + nb * 8 + 2 * tq) =
                make_float2(o[nb][2 * h], o[nb][2 * h + 1]);
        if (tq == 0) s_ml[(warp * ROWS + r) * 2] = m_r[h], s_ml[(warp * ROWS + r) * 2 + 1] = l;
    }
    __syncthreads();
    write_split_partial<D, W, ROWS>(a, plan, split, kvh, r0, nrows, s_o, s_ml, work, tid, Tr::THREADS);
}

template <int D, typename KV>
cudaError_t launch(const AttnArgs & a, const DecodePlan & plan, float * work, cudaStream_t stream) {
    size_t smem;
    if constexpr (std::is_same<KV, StagedKV>::value) smem = DecodeMmaStagedTraits<D>::smem(a);
    else smem = DecodeMmaTraits<D>::SMEM;
    auto kernel = decode_mma_kernel<D, KV>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
    // Staged: all of the SM's memory to shared memory, so that the blocks the register cap allows fit.
    if (err == cudaSuccess && std::is_same<KV, StagedKV>::value)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                   cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(plan.n_split, a.n_head_kv, plan.row_chunks), DecodeMmaTraits<D>::THREADS, smem, stream>>>(a, plan,
                                                                                                            work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    return launch_decode_reduce(a, plan, D, work, stream);
}

}  // namespace

cudaError_t launch_decode_mma(const AttnArgs & a, const DecodePlan & plan, int head_dim, float * work,
                              cudaStream_t stream) {
    const bool staged = kv_path(a.k_type, a.v_type) == KvPath::STAGED;
    return HEADDIM_SWITCH(head_dim, [&] {
        return staged ? launch<kHeadDim, StagedKV>(a, plan, work, stream)
                      : launch<kHeadDim, half>(a, plan, work, stream);
    });
}

}  // namespace rerope_cuda
