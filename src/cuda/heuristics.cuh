// Every tuning choice of the CUDA kernels in one place: which kernel a call runs, tile
// sizes, warps, pipeline depths, register targets and how decode splits the key axis.
// The kernels' shared-memory layouts follow from these (traits.cuh); the launch code
// (launch.cu and the launchers) only reads them. The numbers were chosen by timing on an
// H100; the comments give the alternative and why it lost.
#pragma once

#include <algorithm>

#include "common.cuh"
#include "dispatch.cuh"

namespace rerope_cuda {

// ---------------------------------------------------------------- which kernel

// Decode (split-K over the key axis) for at most this many queries, prefill above: the
// prefill grid is query tiles x heads, so a few queries would get a few blocks walking the
// whole key axis, where decode spreads the keys over the GPU.
constexpr int DECODE_MAX_QUERIES = 4;

inline bool runs_decode(int n_q) { return n_q <= DECODE_MAX_QUERIES; }

// f16 and staged (bf16, q8_0, q4_0) K/V decode runs on tensor cores (decode_mma.cu); f32 K/V on
// the scalar kernel (decode_f32.cu), which computes in f32 and so keeps f32 inputs' accuracy.
inline bool decode_on_tensor_cores(int k_type, int v_type) { return kv_path(k_type, v_type) != KvPath::F32; }

// ---------------------------------------------------------------- prefill (prefill.cu)

// FlashAttention-2 tiles: one block = one head x BLOCK_M queries, one m16 row block per warp.
struct PrefillTuning {
    static constexpr int BLOCK_M = 128;  // against 64: half the K/V traffic from L2 per FLOP
    static constexpr int BLOCK_N = 64;   // keys per tile
    static constexpr int WARPS = 8;
    static constexpr int STAGES = 2;      // key tiles in flight (cp.async): t + 1 loads while t computes
    static constexpr int MIN_BLOCKS = 1;  // 8 warps x ~250 registers fill the register file
};

// ---------------------------------------------------------------- f32 decode (decode_f32.cu)

// LPK = D / 8 lanes hold one key (8 dims each), KPW = 32 / LPK keys per warp step, U steps
// per iteration, STAGES iterations in flight per warp.
struct DecodeF32Tuning {
    static constexpr int WARPS = 4;
    static constexpr int U = 4;         // warp steps per iteration (loads in flight)
    static constexpr int MAX_ROWS = 4;  // query rows of a KV head's group per block
    static constexpr int STAGES = 3;    // iterations of K/V in flight per warp (cp.async ring)
    // Blocks per SM the register cap aims at: 2 keeps every variable in registers (~220),
    // 3 caps at 168 and spills a little; both timed alike.
#ifdef GGML_REROPE_DECODE_MIN_BLOCKS
    static constexpr int MIN_BLOCKS = GGML_REROPE_DECODE_MIN_BLOCKS;
#else
    static constexpr int MIN_BLOCKS = 2;
#endif
    static constexpr int SPLIT_GRANULE = 64;  // keys per split: a multiple of this
    static constexpr int BLOCKS_PER_SM = 8;   // the split count aims at this many blocks per SM
};

// ---------------------------------------------------------------- f16 decode (decode_mma.cu)

// The query rows of a KV head's group (up to ROWS) form the m16 operand; each warp streams
// its own KEYS-key tiles through a STAGES-deep cp.async ring.
struct DecodeMmaTuning {
    static constexpr int WARPS = 4;
    static constexpr int KEYS = 16;  // keys per tile (one k16 step of P.V)
    static constexpr int ROWS = 16;  // query rows per block: the m16 operand
#ifdef GGML_REROPE_DECODE_MMA_STAGES
    static constexpr int STAGES = GGML_REROPE_DECODE_MMA_STAGES;
#else
    // 2 stages with two blocks (8 warps) per SM: 1057 GB/s at 32k keys; 4 stages with one
    // block per SM: 848 GB/s (the latency hiding of the second block wins).
    static constexpr int STAGES = 2;
#endif
    static constexpr int MIN_BLOCKS = STAGES <= 2 ? 2 : 1;
    // Staged K/V (q8_0, q4_0, bf16): raw tiles in flight per warp. 3 keep two blocks per SM at
    // head size 128 (traits.cuh); 2 timed alike, 4 (one block per SM) took 339 us against 216 at
    // 128k q8_0 keys (H200). The staged kernel is bound by the dequantization's instructions and
    // their latency, not by memory: ~1250 instructions per 16-key tile against ~720 for f16, 0.47
    // issued per cycle and scheduler (ncu), so q8_0 decode takes ~1.45x the f16 time there.
#ifdef GGML_REROPE_DECODE_RAW_STAGES
    static constexpr int RAW_STAGES = GGML_REROPE_DECODE_RAW_STAGES;
#else
    static constexpr int RAW_STAGES = 3;
#endif
    // Blocks per SM the staged kernel's register cap (and split count) aims at: 3 (168 registers,
    // a few spills, with RAW_STAGES 2 to fit) took 307 us at 128k q8_0 keys against 216 for 2.
#ifdef GGML_REROPE_DECODE_STAGED_MIN_BLOCKS
    static constexpr int STAGED_MIN_BLOCKS = GGML_REROPE_DECODE_STAGED_MIN_BLOCKS;
#else
    static constexpr int STAGED_MIN_BLOCKS = 2;
#endif
    static constexpr int BLOCKS_PER_SM = 2;  // resident blocks the split count plans for
    // Waves of BLOCKS_PER_SM x SMs blocks. One: the round-robin tiles keep the blocks' work
    // equal, so a second wave would only add a tail.
#ifdef GGML_REROPE_DECODE_MMA_WAVES
    static constexpr int WAVES = GGML_REROPE_DECODE_MMA_WAVES;
#else
    static constexpr int WAVES = 1;
#endif
};

// ---------------------------------------------------------------- helper kernels

constexpr int ROTATE_KEYS_THREADS = 256;  // rotate_keys.cu: one thread per rotation unit
constexpr int KEY_BOUNDS_THREADS = 128;   // key_bounds.cu: one thread per key tile
constexpr int UNROTATE_KEYS_THREADS = 256;  // unrotate_keys.cu: one warp per key row

// ---------------------------------------------------------------- decode split rules

// How a decode call splits the key axis: grid (n_split, n_head_kv, row_chunks); rows =
// n_q x group query rows per KV head. keys_per_split: the f32 kernel's contiguous ranges
// (the f16 kernel deals its tiles round-robin and leaves it 0).
struct DecodePlan {
    int n_split, keys_per_split, row_chunks, rows;
};

// f32 decode: about BLOCKS_PER_SM blocks per SM over heads x row chunks x splits, each split
// a whole number of granules.
inline DecodePlan plan_decode_f32(const AttnArgs & a, int sm_count) {
    using Tu = DecodeF32Tuning;
    constexpr int G = Tu::SPLIT_GRANULE, MR = Tu::MAX_ROWS;
    DecodePlan p;
    p.rows = a.n_q * a.group;
    p.row_chunks = (p.rows + MR - 1) / MR;
    const int granules = (a.n_kv + G - 1) / G;
    const long long per_split = (long long) a.n_head_kv * p.row_chunks;
    long long want = ((long long) Tu::BLOCKS_PER_SM * (sm_count > 0 ? sm_count : 1) + per_split - 1) / per_split;
    if (want < 1) want = 1;
    if (want > granules) want = granules;
    const int granules_per_split = (int) ((granules + want - 1) / want);
    p.keys_per_split = granules_per_split * G;
    p.n_split = (granules + granules_per_split - 1) / granules_per_split;
    return p;
}

// f16 decode: WAVES x BLOCKS_PER_SM blocks per SM over KV heads x row chunks, at most one
// per WARPS key tiles. Key tiles go round-robin to every warp of the grid: the near tiles,
// the only ones rotated, are the last ~w keys, and contiguous splits put them all on the last
// block, which then set the kernel's time (at 32k keys: 60 us against 97 us).
inline DecodePlan plan_decode_mma(const AttnArgs & a, int sm_count) {
    using Tu = DecodeMmaTuning;
    DecodePlan p = {};
    p.rows = a.n_q * a.group;
    p.row_chunks = (p.rows + Tu::ROWS - 1) / Tu::ROWS;
    const long long per_split = (long long) a.n_head_kv * p.row_chunks;
    const int per_sm = kv_path(a.k_type, a.v_type) == KvPath::STAGED ? Tu::STAGED_MIN_BLOCKS : Tu::BLOCKS_PER_SM;
    const long long slots = (long long) per_sm * Tu::WAVES * (sm_count > 0 ? sm_count : 1);
    const long long most = ((a.n_kv + Tu::KEYS - 1) / Tu::KEYS + Tu::WARPS - 1) / Tu::WARPS;
    p.n_split = (int) std::max(1LL, std::min(most, (slots + per_split - 1) / per_split));
    p.keys_per_split = 0;  // tiles are dealt round-robin, not in ranges
    return p;
}

}  // namespace rerope_cuda
