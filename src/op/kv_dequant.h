/* K/V row loaders: one row of head_dim elements in a ggml_rerope_kv_type -> float32.
 * kv_dequant.c holds the portable reference for every type (the scalar kernel uses it; the
 * SIMD kernels replace the hot types with their own, kernel_body.h picks). Block layouts are
 * ggml's (ggml-common.h): 32 elements a block, the scale(s) as IEEE half first. */
#ifndef GGML_REROPE_KV_DEQUANT_H
#define GGML_REROPE_KV_DEQUANT_H

#include <stdint.h>
#include <string.h>

/* dst[0 .. n) = row src of n elements (n a multiple of the type's block). */
typedef void (*rerope_row_fn)(float * dst, const void * src, int n);

/* The reference loader of a type the operator reads (check_call has refused the others: NULL). */
rerope_row_fn rerope_row_fn_ref(int32_t type);

#define RR_QK 32 /* elements per block of every block type */

/* Byte offsets inside one block (ggml-common.h). */
enum {
    RR_Q8_0_QS = 2,  /* d; qs[32] */
    RR_Q4_0_QS = 2,  /* d; qs[16] */
    RR_Q4_1_QS = 4,  /* d, m; qs[16] */
    RR_Q5_0_QH = 2,  /* d; qh[4]; qs[16] */
    RR_Q5_1_QH = 4,  /* d, m; qh[4]; qs[16] */
    RR_BLOCK_Q8_0 = 34,
    RR_BLOCK_Q4_0 = 18,
    RR_BLOCK_Q4_1 = 20,
    RR_BLOCK_Q5_0 = 22,
    RR_BLOCK_Q5_1 = 24,
    RR_BLOCK_IQ4_NL = 18
};

/* IEEE half -> float, subnormals, inf and NaN included. */
static inline float rerope_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        exp = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The half at byte p (blocks are byte-packed: no alignment). */
static inline float rerope_half_at(const uint8_t * p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return rerope_half_to_float(h);
}

#endif
