// Kernel traits: tile sizes, warps and shared-memory layout of each kernel, kept apart
// from the launch code (FlashAttention style). Change a tile here, nowhere else.
#pragma once

#include "common.cuh"

namespace rerope_cuda {

// Prefill: FlashAttention-2 on mma.sync m16n8k16 (f16 operands, f32 accumulation).
// One block = one head x BLOCK_M queries; each of the 8 warps owns 16 query rows and
// walks the key tiles of BLOCK_N keys, two stages deep (cp.async). Shared memory, in
// halves, row stride D + 8 (16 bytes of padding: ldmatrix rows land in distinct banks):
//   [STAGES] near-rotated K | [STAGES] far K (raw for CLAMP, far-rotated for LEAKY/GROUP)
//   | [STAGES] V | key positions [STAGES] | query positions | thetas
// The query tile is staged through the near and far key stages before the loop. BLOCK_M 128
// (against 64) halves the K/V traffic from L2 per FLOP.
template <int D_> struct PrefillTraits {
    static constexpr int D = D_;
    static constexpr int BLOCK_M = 128;
    static constexpr int BLOCK_N = 64;
    static constexpr int WARPS = 8;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int MIN_BLOCKS = 1;  // 8 warps x ~250 registers fill the register file
    static constexpr int STAGES = 2;
    static constexpr int SD = D + 8;  // smem row stride in halves
    static constexpr int TILE_HALVES = BLOCK_N * SD;
    static_assert(BLOCK_M == WARPS * 16, "one m16 row block per warp");
    static_assert(BLOCK_M <= STAGES * BLOCK_N, "query staging reuses the key stages");
    static_assert(D % 16 == 0 && D <= MAX_HEAD_DIM, "head size");

    static constexpr size_t OFF_KN = 0;
    static constexpr size_t OFF_KF = OFF_KN + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_V = OFF_KF + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_KPOS = OFF_V + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_QPOS = OFF_KPOS + STAGES * BLOCK_N * sizeof(int);
    static constexpr size_t OFF_THETA = (OFF_QPOS + BLOCK_M * sizeof(int) + 15) / 16 * 16;
    static constexpr size_t SMEM = OFF_THETA + MAX_PAIRS * sizeof(double);
};

// Decode (flash-decoding): one block = one KV head x one split of the key axis x up to
// MAX_ROWS query rows of that head's group (n_q x n_head/n_head_kv rows), so each K/V head
// is read once for its whole query group. Each warp streams its own keys straight from
// global memory (no block barrier in the loop): LPK lanes hold one key (8 dims each,
// 16-byte cp.async into the lane's own smem slots), KPW keys per warp step, U steps per
// iteration, STAGES iterations in flight.
// Keys that need rotation (near, or far LEAKY / GROUP) are rotated in registers through a
// small per-warp scratch. Scores, softmax and P.V run in f32; warps merge at the end.
template <int D_, typename T> struct DecodeTraits {
    static constexpr int D = D_;
    static constexpr int WARPS = 4;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int LPK = D / 8;     // lanes per key
    static constexpr int KPW = 32 / LPK;  // keys per warp step
    static constexpr int U = 4;           // warp steps per iteration (loads in flight)
    static constexpr int KEYS_PER_ITER = WARPS * KPW * U;
    static constexpr int MAX_ROWS = 4;
    // Blocks per SM the register cap aims at: 2 keeps every variable in registers (~220),
    // 3 caps at 168 and spills a little; timed alike on the H100 (docs/gpu/decode_variants_*).
#ifdef GGML_REROPE_DECODE_MIN_BLOCKS
    static constexpr int MIN_BLOCKS = GGML_REROPE_DECODE_MIN_BLOCKS;
#else
    static constexpr int MIN_BLOCKS = 2;
#endif
    static constexpr int SPLIT_GRANULE = 64;  // keys per split: a multiple of this
    static_assert(D == 64 || D == 128, "head size");
    static_assert(SPLIT_GRANULE % KEYS_PER_ITER == 0, "split granule");

    static constexpr size_t OFF_SCRATCH = 0;                                   // [WARPS][KPW * D] f32
    static constexpr size_t OFF_ACC = OFF_SCRATCH + WARPS * KPW * D * sizeof(float);  // [WARPS][MAX_ROWS][D]
    static constexpr size_t OFF_ML = OFF_ACC + WARPS * MAX_ROWS * D * sizeof(float);  // [WARPS][MAX_ROWS][2]
    static constexpr size_t OFF_QN = OFF_ML + WARPS * MAX_ROWS * 2 * sizeof(float);      // [MAX_ROWS][D] f32
    static constexpr size_t OFF_THETA = OFF_QN + MAX_ROWS * D * sizeof(float);              // [MAX_PAIRS] f64
    static constexpr int STAGES = 3;  // iterations of K/V in flight per warp (cp.async ring)
    static constexpr size_t OFF_RING = (OFF_THETA + MAX_PAIRS * sizeof(double) + 15) / 16 * 16;
    // [STAGES][U][K|V][THREADS] pieces of 8 elements
    static constexpr size_t SMEM = OFF_RING + (size_t) STAGES * U * 2 * THREADS * 8 * sizeof(T);
};

// Decode on tensor cores (f16 K/V): the query rows of one KV head's group (up to 16:
// n_q x n_head/n_head_kv, zero-padded) form the m16 operand of mma.sync, so a key costs
// a few warp instructions instead of ~140 for the per-lane dot products above. Each warp
// streams its own key tiles (KEYS keys, every WARPS-th tile of the block's split) through
// its own STAGES-deep cp.async ring: no block barrier in the loop. Per warp, in halves, row
// stride D + 8: [STAGES] K | [STAGES] V | near-rotated K | far-rotated K; key positions.
// The query staging and the final warp merge reuse the rings.
template <int D_> struct DecodeMmaTraits {
    static constexpr int D = D_;
    static constexpr int WARPS = 4;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int KEYS = 16;
#ifdef GGML_REROPE_DECODE_MMA_STAGES
    static constexpr int STAGES = GGML_REROPE_DECODE_MMA_STAGES;
#else
    // 2 stages, two blocks (8 warps) per SM: 1057 GB/s at 32k on the H100; 4 stages with one
    // block per SM: 848 (docs/gpu/decode_mma_stages_run9.log).
    static constexpr int STAGES = 2;
#endif
    static constexpr int MIN_BLOCKS = STAGES <= 2 ? 2 : 1;
    static constexpr int ROWS = 16;
    static constexpr int SD = D + 8;
    static constexpr int TILE_HALVES = KEYS * SD;
    static constexpr size_t WARP_BYTES = (2 * STAGES + 2) * TILE_HALVES * sizeof(half) + STAGES * KEYS * sizeof(int);
    static constexpr size_t OFF_WARPS = 0;
    static constexpr size_t OFF_THETA = (OFF_WARPS + WARPS * WARP_BYTES + 15) / 16 * 16;
    static constexpr size_t OFF_QPOS = OFF_THETA + MAX_PAIRS * sizeof(double);
    static constexpr size_t SMEM = OFF_QPOS + ROWS * sizeof(int);
    static_assert(2 * ROWS * SD * sizeof(half) <= WARPS * WARP_BYTES, "query staging fits the rings");
    static_assert(WARPS * ROWS * (D + 2) * sizeof(float) <= WARPS * WARP_BYTES, "warp merge fits the rings");
};

}  // namespace rerope_cuda
