// Staged K/V tiles: rows stored in a type other than the tensor-core kernels' own f16 (bf16,
// q8_0, q4_0, or f16 paired with one of those) are copied raw, global -> shared, with cp.async,
// then converted to f16 tiles in shared memory once they have landed.
//
// Why raw copies converted in shared memory, not plain loads converted on the way in: the copy
// stays asynchronous (tile t + 1 loads while tile t computes, as the f16 path's cp.async does)
// and holds no registers while in flight (the prefill kernel uses 253 of its 255).
//
// Block rows are 34 / 18 bytes a block (68, 136, 36 or 72 bytes at head size 64 / 128) and a
// cache view may start at any 4-byte boundary, but cp.async moves aligned 4, 8 or 16 bytes. A
// row is copied as the 16-byte granules that hold it, from the one holding its first byte: the
// bytes before the row lie in the same allocation (allocations are 256-byte aligned), and the
// last granule is cut at the row's end (cp.async's src-size), so nothing past the buffer is read.
// In shared memory the row then starts at (its address % 16). DRAM moves 32-byte sectors, so
// the granule rounding costs no extra traffic.
#pragma once

#include <stdint.h>

#include "common.cuh"
#include "cp_async.cuh"
#include "kv_types.cuh"

namespace rerope_cuda {

// 16-byte granules a staged row takes: exact when every row starts on a 16-byte boundary, else
// room for the worst start (12 bytes into a granule: rows start 4-byte aligned).
inline int staged_row_chunks(const void * base, int row_bytes) {
    const bool aligned = reinterpret_cast<uintptr_t>(base) % 16 == 0 && row_bytes % 16 == 0;
    return aligned ? row_bytes / 16 : (row_bytes + 12 + 15) / 16;
}

// One of K / V as stored: [n_kv][n_head_kv] rows of `type`.
struct KvRows {
    const unsigned char * base;
    int type, row_bytes, chunks;
};

__host__ __device__ __forceinline__ KvRows key_rows(const AttnArgs & a) {
    return {static_cast<const unsigned char *>(a.k), a.k_type, a.k_row_bytes, a.k_chunks};
}
__host__ __device__ __forceinline__ KvRows value_rows(const AttnArgs & a) {
    return {static_cast<const unsigned char *>(a.v), a.v_type, a.v_row_bytes, a.v_chunks};
}

// Bytes of `rows` staged rows.
__host__ __device__ __forceinline__ size_t staged_bytes(const KvRows & b, int rows) {
    return (size_t) rows * b.chunks * 16;
}

// Row j (clamped to the last row: rows past n_kv are zero-filled, any address does) of head kvh.
__host__ __device__ __forceinline__ const unsigned char * kv_row(const KvRows & b, const AttnArgs & a, int j, int kvh) {
    return b.base + ((size_t) (j < a.n_kv ? j : a.n_kv - 1) * a.n_head_kv + kvh) * b.row_bytes;
}

// Offset of row j's first byte in its staged copy: its address % 16 (32-bit products keep it).
__host__ __device__ __forceinline__ int staged_row_start(const KvRows & b, const AttnArgs & a, int kvh, int j) {
    const uint32_t row = (uint32_t) (j < a.n_kv ? j : a.n_kv - 1) * (uint32_t) a.n_head_kv + (uint32_t) kvh;
    return (int) (((uint32_t) reinterpret_cast<uintptr_t>(b.base) + row * (uint32_t) b.row_bytes) & 15);
}

// Bytes of granule c that belong to a row whose last byte is end - 1 (counted from the granule
// holding its first byte): the rest of the granule is zero-filled. 32-bit on purpose: 64-bit
// pointer differences made this loop several times longer.
__host__ __device__ __forceinline__ int granule_bytes(int end, int c) {
    const int left = end - 16 * c;
    return left < 0 ? 0 : left > 16 ? 16 : left;
}

// Issues the copies of rows j0 .. j0 + rows - 1 of head kvh into dst (chunks * 16 bytes a row,
// 16-byte aligned): TPR threads a row, tid < rows * TPR. Rows past n_kv become zeros, which
// dequantize to 0 in every type.
template <int TPR>
__device__ __forceinline__ void stage_rows(unsigned char * dst, const KvRows & b, const AttnArgs & a, int kvh, int j0,
                                           int tid) {
    const int r = tid / TPR, j = j0 + r;
    const unsigned char * row = kv_row(b, a, j, kvh);
    const int start = (int) (reinterpret_cast<uintptr_t>(row) & 15);
    const unsigned char * g0 = row - start;  // the granule holding its first byte
    const int end = j < a.n_kv ? start + b.row_bytes : 0;
    unsigned char * d = dst + r * b.chunks * 16;
    for (int c = tid % TPR; c < b.chunks; c += TPR) {
        const int bytes = granule_bytes(end, c);
        cp_async16(d + 16 * c, g0 + (bytes > 0 ? 16 * c : 0), bytes);
    }
}

// dst (f16 rows, stride SD halves) = staged rows j0 .. j0 + rows - 1 of head kvh of TYPE.
template <int D, int SD, int TYPE>
__device__ __forceinline__ void convert_rows(half * dst, const unsigned char * stage, const KvRows & b,
                                             const AttnArgs & a, int kvh, int j0, int rows, int tid, int nthreads) {
    constexpr int BPR = D / QK;  // blocks of 32 elements a row: one a thread and step
    for (int idx = tid; idx < rows * BPR; idx += nthreads) {
        const int r = idx / BPR, blk = idx % BPR;
        const unsigned char * src = stage + (size_t) r * b.chunks * 16 + staged_row_start(b, a, kvh, j0 + r);
        dequant32<TYPE>(dst + r * SD + QK * blk, src, blk);
    }
}

// The same for the rows' run-time type: one uniform branch a tile, the loop inside specialised.
template <int D, int SD>
__device__ __forceinline__ void convert_staged_rows(half * dst, const unsigned char * stage, const KvRows & b,
                                                    const AttnArgs & a, int kvh, int j0, int rows, int tid,
                                                    int nthreads) {
    switch (b.type) {
        case GGML_REROPE_KV_Q8_0:
            convert_rows<D, SD, GGML_REROPE_KV_Q8_0>(dst, stage, b, a, kvh, j0, rows, tid, nthreads);
            break;
        case GGML_REROPE_KV_Q4_0:
            convert_rows<D, SD, GGML_REROPE_KV_Q4_0>(dst, stage, b, a, kvh, j0, rows, tid, nthreads);
            break;
        case GGML_REROPE_KV_BF16:
            convert_rows<D, SD, GGML_REROPE_KV_BF16>(dst, stage, b, a, kvh, j0, rows, tid, nthreads);
            break;
        default: convert_rows<D, SD, GGML_REROPE_KV_F16>(dst, stage, b, a, kvh, j0, rows, tid, nthreads);
    }
}

}  // namespace rerope_cuda
