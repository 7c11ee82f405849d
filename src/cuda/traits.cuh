// Kernel traits: tile sizes, warps and shared-memory layout of each kernel, kept apart
// from the launch code (FlashAttention style). Change a tile here, nowhere else.
#pragma once

#include "common.cuh"

namespace rerope_cuda {

// Prefill: FlashAttention-2 on mma.sync m16n8k16 (f16 operands, f32 accumulation).
// One block = one head x BLOCK_M queries; each of the 4 warps owns 16 query rows and
// walks the key tiles of BLOCK_N keys. Shared memory, in halves, row stride D + 8
// (16 bytes of padding: ldmatrix rows land in distinct banks):
//   K raw | K near-rotated | K far-rotated (leaky / group) | V | key positions x2 | thetas
// The query tile is staged through the two rotated-K buffers before the key loop.
template <int D_> struct PrefillTraits {
    static constexpr int D = D_;
    static constexpr int BLOCK_M = 64;
    static constexpr int BLOCK_N = 64;
    static constexpr int WARPS = 4;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int SD = D + 8;  // smem row stride in halves
    static constexpr int TILE_HALVES = BLOCK_N * SD;
    static_assert(BLOCK_M == WARPS * 16, "one m16 row block per warp");
    static_assert(D % 16 == 0 && D <= MAX_HEAD_DIM, "head size");

    static constexpr size_t OFF_K = 0;
    static constexpr size_t OFF_KR = OFF_K + TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_KF = OFF_KR + TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_V = OFF_KF + TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_KPOS = OFF_V + TILE_HALVES * sizeof(half);
    static constexpr size_t OFF_QPOS = OFF_KPOS + 2 * BLOCK_N * sizeof(int);
    static constexpr size_t OFF_THETA = (OFF_QPOS + BLOCK_M * sizeof(int) + 15) / 16 * 16;
    static constexpr size_t SMEM = OFF_THETA + MAX_PAIRS * sizeof(double);
};

// Decode (flash-decoding): one block = one KV head x one split of the key axis x up to
// MAX_ROWS query rows of that head's group (n_q x n_head/n_head_kv rows), so each K/V
// head is read once for its whole query group. Key tiles of KEYS keys are streamed
// through STAGES cp.async stages; scores and P.V run in f32.
template <int D_, typename T> struct DecodeTraits {
    static constexpr int D = D_;
    static constexpr int THREADS = 128;
    static constexpr int KEYS = 32;
    static constexpr int STAGES = 3;
    static constexpr int MAX_ROWS = 8;
    static constexpr int SD = D + 16 / (int) sizeof(T);  // 16 bytes of padding per row
    static constexpr int CHUNKS = D * (int) sizeof(T) / 16;  // 16-byte pieces per row
    static constexpr int TILE = KEYS * SD;                   // elements of one K or V tile
    static_assert(KEYS == 32, "softmax maps one key per lane");
    static_assert(THREADS / KEYS * 2 == MAX_ROWS, "score phase: 4 row groups x 2 rows");

    static constexpr size_t OFF_THETA = 0;
    static constexpr size_t OFF_QN = OFF_THETA + MAX_PAIRS * sizeof(double);
    static constexpr size_t OFF_QF = OFF_QN + MAX_ROWS * D * sizeof(float);
    static constexpr size_t OFF_P = OFF_QF + MAX_ROWS * D * sizeof(float);
    static constexpr size_t OFF_ALPHA = OFF_P + MAX_ROWS * KEYS * sizeof(float);
    static constexpr size_t OFF_QPOS = OFF_ALPHA + MAX_ROWS * sizeof(float);
    static constexpr size_t OFF_KPOS = OFF_QPOS + MAX_ROWS * sizeof(int);
    static constexpr size_t OFF_K = (OFF_KPOS + STAGES * KEYS * sizeof(int) + 15) / 16 * 16;
    static constexpr size_t OFF_V = OFF_K + STAGES * TILE * sizeof(T);
    static constexpr size_t OFF_KR = OFF_V + STAGES * TILE * sizeof(T);
    static constexpr size_t OFF_KF = OFF_KR + TILE * sizeof(T);
    static constexpr size_t SMEM = OFF_KF + TILE * sizeof(T);
};

}  // namespace rerope_cuda
