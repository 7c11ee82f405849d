// Kernel traits: the shared-memory layout and derived sizes of each kernel for a head size,
// built on the tuning numbers of heuristics.cuh (change a tile there, nowhere else).
#pragma once

#include "common.cuh"
#include "heuristics.cuh"
#include "kv_staging.cuh"

namespace rerope_cuda {

// Prefill: FlashAttention-2 on mma.sync m16n8k16 (f16 operands, f32 accumulation).
// Each warp owns 16 query rows and walks the key tiles of BLOCK_N keys, STAGES deep
// (cp.async). Shared memory, in halves, row stride D + 8 (16 bytes of padding: ldmatrix
// rows land in distinct banks):
//   [STAGES] near-rotated K | [STAGES] far K (raw for CLAMP, far-rotated for LEAKY/GROUP)
//   | [STAGES] V | key positions [STAGES] | query positions | thetas
// The query tile is staged through the near and far key stages before the loop.
template <int D_> struct PrefillTraits : PrefillTuning {
    static constexpr int D = D_;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int SD = D + 8;  // smem row stride in halves
    static constexpr int TILE_HALVES = BLOCK_N * SD;
    static_assert(BLOCK_M == WARPS * 16, "one m16 row block per warp");
    static_assert(STAGES == 2, "the key loop double-buffers (stage pb ^ 1 loads while pb computes)");
    static_assert(THREADS >= BLOCK_M && THREADS >= BLOCK_N, "one thread per query row / key position");
    static_assert(BLOCK_M <= STAGES * BLOCK_N, "query staging reuses the key stages");
    static_assert(BLOCK_N % 16 == 0, "key tiles of whole k16 steps");
    static_assert(D % 16 == 0 && D <= MAX_HEAD_DIM, "head size");
    static_assert(THREADS % BLOCK_N == 0, "staged tiles: whole threads a key row (kv_staging.cuh)");

    static constexpr size_t OFF_KN = 0;
    static constexpr size_t OFF_KF = OFF_KN + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_V = OFF_KF + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_KPOS = OFF_V + STAGES * TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_QPOS = OFF_KPOS + STAGES * BLOCK_N * sizeof(int);
    static constexpr size_t OFF_THETA = (OFF_QPOS + BLOCK_M * sizeof(int) + 15) / 16 * 16;
    static constexpr size_t SMEM = OFF_THETA + MAX_PAIRS * sizeof(double);

    // Staged K/V (kv_staging.cuh) only, after the layout above: [STAGES] raw far keys (CLAMP's
    // far path reads the cache's keys; LEAKY / GROUP / CHUNK read the rotated f16 workspace) | [STAGES]
    // raw values. An f16 half of a staged pair is copied straight into its f16 tiles: no raw room.
    static constexpr size_t OFF_RAW = (SMEM + 15) / 16 * 16;
    __host__ __device__ static size_t raw_key_stage_bytes(const AttnArgs & a) {
        return far_rotates_keys(a) || a.k_type == GGML_REROPE_KV_F16 ? 0 : staged_bytes(key_rows(a), BLOCK_N);
    }
    __host__ __device__ static size_t raw_value_stage_bytes(const AttnArgs & a) {
        return a.v_type == GGML_REROPE_KV_F16 ? 0 : staged_bytes(value_rows(a), BLOCK_N);
    }
    __host__ __device__ static size_t staged_smem(const AttnArgs & a) {
        return OFF_RAW + STAGES * (raw_key_stage_bytes(a) + raw_value_stage_bytes(a));
    }
};

// f32 decode (flash-decoding): one block = one KV head x one split of the key axis x up to
// MAX_ROWS query rows of that head's group (n_q x n_head/n_head_kv rows), so each K/V head
// is read once for its whole query group. Each warp streams its own keys straight from
// global memory (no block barrier in the loop): LPK lanes hold one key (8 dims each,
// cp.async into the lane's own smem slots), KPW keys per warp step, U steps per iteration.
// Keys that need rotation (near, or far LEAKY / GROUP / CHUNK) are rotated in registers through a
// small per-warp scratch. Scores, softmax and P.V run in f32; warps merge at the end.
template <int D_> struct DecodeF32Traits : DecodeF32Tuning {
    static constexpr int D = D_;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int LPK = D / 8;     // lanes per key
    static constexpr int KPW = 32 / LPK;  // keys per warp step
    static constexpr int KEYS_PER_ITER = WARPS * KPW * U;
    static constexpr int PIECE = 8 * (int) sizeof(float);  // bytes per lane per key row
    static_assert(D == 64 || D == 128, "head size");
    static_assert(SPLIT_GRANULE % KEYS_PER_ITER == 0, "split granule");

    static constexpr size_t OFF_SCRATCH = 0;                                          // [WARPS][KPW * D] f32
    static constexpr size_t OFF_ACC = OFF_SCRATCH + WARPS * KPW * D * sizeof(float);  // [WARPS][MAX_ROWS][D]
    static constexpr size_t OFF_ML = OFF_ACC + WARPS * MAX_ROWS * D * sizeof(float);  // [WARPS][MAX_ROWS][2]
    static constexpr size_t OFF_QN = OFF_ML + WARPS * MAX_ROWS * 2 * sizeof(float);   // [MAX_ROWS][D] f32
    static constexpr size_t OFF_THETA = OFF_QN + MAX_ROWS * D * sizeof(float);        // [MAX_PAIRS] f64
    static constexpr size_t OFF_RING = (OFF_THETA + MAX_PAIRS * sizeof(double) + 15) / 16 * 16;
    // [STAGES][U][K|V][THREADS] pieces of 8 elements
    static constexpr size_t SMEM = OFF_RING + (size_t) STAGES * U * 2 * THREADS * PIECE;
};

// f16 decode on tensor cores: the query rows of one KV head's group (up to ROWS: n_q x
// n_head/n_head_kv, zero-padded) form the m16 operand of mma.sync, so a key costs a few warp
// instructions instead of ~140 for the per-lane dot products of the f32 kernel. Each warp
// streams its own key tiles (KEYS keys) through its own STAGES-deep cp.async ring: no block
// barrier in the loop. Per warp, in halves, row stride D + 8: [STAGES] K | [STAGES] V |
// near-rotated K | far-rotated K; key positions. The query staging and the final warp merge
// reuse the rings.
template <int D_> struct DecodeMmaTraits : DecodeMmaTuning {
    static constexpr int D = D_;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int SD = D + 8;
    static constexpr int TILE_HALVES = KEYS * SD;
    static_assert(KEYS == 16 && ROWS == 16, "one m16 x k16 tile per warp step");
    static constexpr size_t WARP_BYTES = (2 * STAGES + 2) * TILE_HALVES * sizeof(half) + STAGES * KEYS * sizeof(int);
    static constexpr size_t OFF_WARPS = 0;
    static constexpr size_t OFF_THETA = (OFF_WARPS + WARPS * WARP_BYTES + 15) / 16 * 16;
    static constexpr size_t OFF_QPOS = OFF_THETA + MAX_PAIRS * sizeof(double);
    static constexpr size_t SMEM = OFF_QPOS + ROWS * sizeof(int);
    static_assert(2 * ROWS * SD * sizeof(half) <= WARPS * WARP_BYTES, "query staging fits the rings");
    static_assert(WARPS * ROWS * (D + 2) * sizeof(float) <= WARPS * WARP_BYTES, "warp merge fits the rings");
};

// The same kernel on staged K/V (bf16, q8_0, q4_0; kv_staging.cuh). Each warp's RAW_STAGES-deep
// cp.async ring holds raw tiles; a tile is converted into one f16 K tile and one f16 V tile, and
// its keys are rotated from there: near keys into the raw stage just converted (free until the
// tile after next is issued into it), far LEAKY / GROUP / CHUNK keys in place once the near copy is made.
// Fixed part first (the raw ring's size depends on the types):
//   query positions | per warp: K | V (f16) | key positions [RAW_STAGES]
//   | raw [RAW_STAGES] (K rows | V rows, at least one f16 tile)
// At head size 128, q8_0: 24 KB a warp, 97 KB a block: two blocks per SM (228 KB) fit.
template <int D_> struct DecodeMmaStagedTraits : DecodeMmaTuning {
    static constexpr int D = D_;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int SD = D + 8;
    static constexpr int TILE_HALVES = KEYS * SD;
    static_assert(KEYS == 16 && ROWS == 16, "one m16 x k16 tile per warp step");
    // Thetas are read from the kernel parameters (only near / far-rotated tiles need them).
    static constexpr size_t OFF_QPOS = 0;
    static constexpr size_t OFF_WARPS = (OFF_QPOS + ROWS * sizeof(int) + 15) / 16 * 16;
    static constexpr size_t FIXED_WARP_BYTES = 2 * TILE_HALVES * sizeof(half) + RAW_STAGES * KEYS * sizeof(int);
    static_assert(FIXED_WARP_BYTES % 16 == 0, "the raw ring stays 16-byte aligned (cp.async)");
    __host__ __device__ static size_t raw_stage_bytes(const AttnArgs & a) {
        const size_t raw = staged_bytes(key_rows(a), KEYS) + staged_bytes(value_rows(a), KEYS);
        const size_t tile = TILE_HALVES * sizeof(half);  // the near-rotated keys land here
        return raw > tile ? raw : tile;
    }
    __host__ __device__ static size_t warp_bytes(const AttnArgs & a) {
        return FIXED_WARP_BYTES + RAW_STAGES * raw_stage_bytes(a);
    }
    __host__ __device__ static size_t smem(const AttnArgs & a) { return OFF_WARPS + WARPS * warp_bytes(a); }
    static constexpr size_t MIN_WARP_BYTES = FIXED_WARP_BYTES + RAW_STAGES * TILE_HALVES * sizeof(half);
    static_assert(2 * ROWS * SD * sizeof(half) <= WARPS * MIN_WARP_BYTES, "query staging fits the warp areas");
    static_assert(WARPS * ROWS * (D + 2) * sizeof(float) <= WARPS * MIN_WARP_BYTES, "warp merge fits the warp areas");
};

}  // namespace rerope_cuda
