// The K/V storage types the CUDA kernels read, in ggml's layouts (ggml-common.h), and their
// dequantization: 32 consecutive elements of a row to f16 (the tensor-core tiles) or one element
// to float (the key rotation pre-pass). Block types hold 32 elements a block:
//   q8_0 {f16 d; i8 qs[32]}  x_j = d q_j
//   q4_0 {f16 d; u8 qs[16]}  x_j = d (lo(qs[j]) - 8), x_(j+16) = d (hi(qs[j]) - 8), j < 16
// Row data may sit at any 2-byte boundary (a block is 34 or 18 bytes), so blocks are read in
// 16-bit pieces; f16 / bf16 rows of a staged copy are 4-byte aligned (kv_staging.cuh).
// Host-callable too, so that the bit tricks can be checked without a device.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include "ggml_rerope.h"

namespace rerope_cuda {

constexpr int QK = 32;          // elements of a block
constexpr int Q8_0_BYTES = 34;  // bytes of a q8_0 block
constexpr int Q4_0_BYTES = 18;  // bytes of a q4_0 block

// Whether the CUDA kernels read K or V stored as `type`.
__host__ __device__ constexpr bool kv_type_on_cuda(int type) {
    return type == GGML_REROPE_KV_F32 || type == GGML_REROPE_KV_F16 || type == GGML_REROPE_KV_BF16 ||
           type == GGML_REROPE_KV_Q8_0 || type == GGML_REROPE_KV_Q4_0;
}

// Bytes of one row of d elements (0: a type the kernels do not read, or d not whole blocks).
__host__ __device__ constexpr int kv_row_bytes(int type, int d) {
    if (type == GGML_REROPE_KV_F32) return 4 * d;
    if (type == GGML_REROPE_KV_F16 || type == GGML_REROPE_KV_BF16) return 2 * d;
    if (d % QK != 0) return 0;
    if (type == GGML_REROPE_KV_Q8_0) return d / QK * Q8_0_BYTES;
    if (type == GGML_REROPE_KV_Q4_0) return d / QK * Q4_0_BYTES;
    return 0;
}

// ---------------------------------------------------------------- bit tricks

__host__ __device__ __forceinline__ uint32_t load_u16(const unsigned char * p) {
    return *reinterpret_cast<const uint16_t *>(p);
}
__host__ __device__ __forceinline__ uint32_t load_u32(const unsigned char * p) {
    return *reinterpret_cast<const uint32_t *>(p);
}
__host__ __device__ __forceinline__ half2 bits_to_half2(uint32_t b) { return *reinterpret_cast<half2 *>(&b); }
__host__ __device__ __forceinline__ uint32_t half2_to_bits(half2 h) { return *reinterpret_cast<uint32_t *>(&h); }
__host__ __device__ __forceinline__ float bits_to_float(uint32_t b) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(b);
#else
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
#endif
}

// Byte k of the result = byte (nibble k of s) of the 8 bytes {x, y} (PTX prmt, one instruction).
__host__ __device__ __forceinline__ uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t xy = (uint64_t) y << 32 | x;
    uint32_t r = 0;
    for (int k = 0; k < 4; ++k) r |= (uint32_t) ((xy >> (8 * ((s >> (4 * k)) & 7))) & 0xff) << (8 * k);
    return r;
#endif
}

// Exponent bits 0x64 over a 10-bit mantissa m make the f16 value 1024 + m exactly, so small
// integers become f16 with a byte permute and one subtraction (no int -> float conversions).
constexpr uint32_t F16_0x64_BYTES = 0x64646464u;
constexpr unsigned short F16_1152 = 0x6480;  // 1024 + 128: an int8 with its sign bit flipped
constexpr unsigned short F16_1032 = 0x6408;  // 1024 + 8: the q4_0 nibble bias

// The four bytes of w as two f16 pairs (1024 + byte): bytes 0, 1 -> lo; 2, 3 -> hi.
__host__ __device__ __forceinline__ void bytes_to_biased_half2(uint32_t w, half2 & lo, half2 & hi) {
    lo = bits_to_half2(byte_perm(w, F16_0x64_BYTES, 0x4140));
    hi = bits_to_half2(byte_perm(w, F16_0x64_BYTES, 0x4342));
}

// A block at blk (2-byte aligned) read as NW aligned 32-bit words from the one holding its first
// byte (a shared-memory load may not straddle 4 bytes; the run stays inside the row: rows start
// and end on 4-byte boundaries). Then its f16 scale, and the 4-byte groups of its quants from
// byte `from` of the block: q[i] = bytes from + 4i .. from + 4i + 3, one byte permute each.
template <int NW>
__host__ __device__ __forceinline__ void load_block_words(const unsigned char * blk, uint32_t (&x)[NW], bool & odd) {
    odd = (reinterpret_cast<uintptr_t>(blk) & 2) != 0;
    const unsigned char * w = blk - (odd ? 2 : 0);
#pragma unroll
    for (int i = 0; i < NW; ++i) x[i] = load_u32(w + 4 * i);
}

__host__ __device__ __forceinline__ half2 block_scale2(uint32_t x0, bool odd) {
    return __half2half2(__ushort_as_half((unsigned short) (odd ? x0 >> 16 : x0 & 0xffffu)));
}

// Quant bytes from byte 2 of the block (after the scale): 4-byte groups across word pairs.
template <int NQ, int NW>
__host__ __device__ __forceinline__ void quant_groups(const uint32_t (&x)[NW], bool odd, uint32_t (&q)[NQ]) {
    const uint32_t sel = odd ? 0x7654 : 0x5432;  // odd: byte 2 of the block is byte 0 of word 1
#pragma unroll
    for (int i = 0; i < NQ; ++i) q[i] = byte_perm(x[i], x[i + 1], sel);
}

__host__ __device__ __forceinline__ void store8(half * dst, const uint32_t (&h)[4]) {
    *reinterpret_cast<uint4 *>(dst) = make_uint4(h[0], h[1], h[2], h[3]);
}

// ---------------------------------------------------------------- 32 elements -> f16

// Elements 32 b .. 32 b + 31 of the row at `row` (2-byte aligned; f16 / bf16 rows 4-byte
// aligned) written as f16 to dst (16-byte aligned): one block of the block types. d * q is
// rounded once to f16, as a float dequantization stored to f16 would be.
template <int TYPE> __host__ __device__ __forceinline__ void dequant32(half * dst, const unsigned char * row, int b);

template <>
__host__ __device__ __forceinline__ void dequant32<GGML_REROPE_KV_F16>(half * dst, const unsigned char * row, int b) {
    const unsigned char * p = row + 64 * b;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t h[4] = {load_u32(p + 16 * k), load_u32(p + 16 * k + 4), load_u32(p + 16 * k + 8),
                               load_u32(p + 16 * k + 12)};
        store8(dst + 8 * k, h);
    }
}

template <>
__host__ __device__ __forceinline__ void dequant32<GGML_REROPE_KV_BF16>(half * dst, const unsigned char * row, int b) {
    const unsigned char * p = row + 64 * b;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        uint32_t h[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = load_u32(p + 16 * k + 4 * i);  // round to nearest; beyond +-65504: inf, as an f16 cache
            h[i] = half2_to_bits(__floats2half2_rn(bits_to_float(w << 16), bits_to_float(w & 0xffff0000u)));
        }
        store8(dst + 8 * k, h);
    }
}

template <>
__host__ __device__ __forceinline__ void dequant32<GGML_REROPE_KV_Q8_0>(half * dst, const unsigned char * row, int b) {
    uint32_t x[9];  // the 34 bytes and 2 more, of the row
    bool odd;
    load_block_words(row + b * Q8_0_BYTES, x, odd);
    const half2 d = block_scale2(x[0], odd);
    uint32_t q[8];
    quant_groups(x, odd, q);
    const half2 bias = __half2half2(__ushort_as_half(F16_1152));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        uint32_t h[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            half2 lo, hi;
            bytes_to_biased_half2(q[2 * k + i] ^ 0x80808080u, lo, hi);  // 1024 + (q + 128)
            h[2 * i] = half2_to_bits(__hmul2(__hsub2(lo, bias), d));
            h[2 * i + 1] = half2_to_bits(__hmul2(__hsub2(hi, bias), d));
        }
        store8(dst + 8 * k, h);
    }
}

template <>
__host__ __device__ __forceinline__ void dequant32<GGML_REROPE_KV_Q4_0>(half * dst, const unsigned char * row, int b) {
    uint32_t x[5];  // the 18 bytes and 2 more, of the row
    bool odd;
    load_block_words(row + b * Q4_0_BYTES, x, odd);
    const half2 d = block_scale2(x[0], odd);
    uint32_t q[4];
    quant_groups(x, odd, q);  // elements 0-15: low nibbles of qs[0..15]; 16-31: high nibbles
    const half2 bias = __half2half2(__ushort_as_half(F16_1032));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        uint32_t h[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint32_t n = k < 2 ? q[2 * k + i] & 0x0f0f0f0fu : (q[2 * (k - 2) + i] >> 4) & 0x0f0f0f0fu;
            half2 lo, hi;
            bytes_to_biased_half2(n, lo, hi);  // 1024 + nibble
            h[2 * i] = half2_to_bits(__hmul2(__hsub2(lo, bias), d));
            h[2 * i + 1] = half2_to_bits(__hmul2(__hsub2(hi, bias), d));
        }
        store8(dst + 8 * k, h);
    }
}

// ---------------------------------------------------------------- 1 element -> float

// Element e of the row at `row` (global memory, 2-byte aligned), in f32.
template <int TYPE> __host__ __device__ __forceinline__ float dequant1(const unsigned char * row, int e);

template <> __host__ __device__ __forceinline__ float dequant1<GGML_REROPE_KV_F32>(const unsigned char * row, int e) {
    return reinterpret_cast<const float *>(row)[e];
}
template <> __host__ __device__ __forceinline__ float dequant1<GGML_REROPE_KV_F16>(const unsigned char * row, int e) {
    return __half2float(reinterpret_cast<const half *>(row)[e]);
}
template <> __host__ __device__ __forceinline__ float dequant1<GGML_REROPE_KV_BF16>(const unsigned char * row, int e) {
    return bits_to_float(load_u16(row + 2 * e) << 16);
}
template <> __host__ __device__ __forceinline__ float dequant1<GGML_REROPE_KV_Q8_0>(const unsigned char * row, int e) {
    const unsigned char * blk = row + (e / QK) * Q8_0_BYTES;
    const float d = __half2float(__ushort_as_half((unsigned short) load_u16(blk)));
    return d * (float) (int8_t) blk[2 + e % QK];
}
template <> __host__ __device__ __forceinline__ float dequant1<GGML_REROPE_KV_Q4_0>(const unsigned char * row, int e) {
    const unsigned char * blk = row + (e / QK) * Q4_0_BYTES;
    const float d = __half2float(__ushort_as_half((unsigned short) load_u16(blk)));
    const int j = e % QK;
    const int q = j < 16 ? (blk[2 + j] & 15) : (blk[2 + j - 16] >> 4);
    return d * (float) (q - 8);
}

}  // namespace rerope_cuda
