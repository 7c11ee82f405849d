/* Reference K/V row loaders, one per ggml_rerope_kv_type, written as ggml's dequantize_row_*
 * (ggml-quants.c) so the scalar kernel reads exactly the values ggml would. */
#include "kv_dequant.h"

#include "ggml_rerope.h"

static void row_f32(float * dst, const void * src, int n) { memcpy(dst, src, sizeof(float) * (size_t) n); }

static void row_f16(float * dst, const void * src, int n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int i = 0; i < n; i++) dst[i] = rerope_half_at(s + 2 * i);
}

static void row_bf16(float * dst, const void * src, int n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, sizeof h);
        const uint32_t bits = (uint32_t) h << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}

static void row_q8_0(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q8_0) {
        const float d = rerope_half_at(b);
        const int8_t * qs = (const int8_t *) (b + RR_Q8_0_QS);
        for (int j = 0; j < RR_QK; j++) dst[i + j] = qs[j] * d;
    }
}

static void row_q4_0(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q4_0) {
        const float d = rerope_half_at(b);
        const uint8_t * qs = b + RR_Q4_0_QS;
        for (int j = 0; j < RR_QK / 2; j++) {
            dst[i + j] = ((qs[j] & 0x0f) - 8) * d;
            dst[i + j + RR_QK / 2] = ((qs[j] >> 4) - 8) * d;
        }
    }
}

static void row_q4_1(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q4_1) {
        const float d = rerope_half_at(b), m = rerope_half_at(b + 2);
        const uint8_t * qs = b + RR_Q4_1_QS;
        for (int j = 0; j < RR_QK / 2; j++) {
            dst[i + j] = (qs[j] & 0x0f) * d + m;
            dst[i + j + RR_QK / 2] = (qs[j] >> 4) * d + m;
        }
    }
}

/* q5_0 / q5_1: low 4 bits as q4's nibbles, bit 4 of element j in bit j of qh (little endian). */
static void row_q5(float * dst, const uint8_t * b, int n, int with_min) {
    const int qh_at = with_min ? RR_Q5_1_QH : RR_Q5_0_QH, block = with_min ? RR_BLOCK_Q5_1 : RR_BLOCK_Q5_0;
    for (int i = 0; i < n; i += RR_QK, b += block) {
        const float d = rerope_half_at(b), m = with_min ? rerope_half_at(b + 2) : 0.0f;
        const int bias = with_min ? 0 : 16;
        uint32_t qh;
        memcpy(&qh, b + qh_at, sizeof qh);
        const uint8_t * qs = b + qh_at + 4;
        for (int j = 0; j < RR_QK / 2; j++) {
            const int x0 = ((qs[j] & 0x0f) | (((qh >> j) << 4) & 0x10)) - bias;
            const int x1 = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - bias;
            dst[i + j] = with_min ? x0 * d + m : x0 * d;
            dst[i + j + RR_QK / 2] = with_min ? x1 * d + m : x1 * d;
        }
    }
}

static void row_q5_0(float * dst, const void * src, int n) { row_q5(dst, (const uint8_t *) src, n, 0); }
static void row_q5_1(float * dst, const void * src, int n) { row_q5(dst, (const uint8_t *) src, n, 1); }

/* ggml's kvalues_iq4nl: the non-uniform 4-bit grid */
static const int8_t rr_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static void row_iq4_nl(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_IQ4_NL) {
        const float d = rerope_half_at(b);
        const uint8_t * qs = b + 2;
        for (int j = 0; j < RR_QK / 2; j++) {
            dst[i + j] = d * rr_iq4nl_values[qs[j] & 0x0f];
            dst[i + j + RR_QK / 2] = d * rr_iq4nl_values[qs[j] >> 4];
        }
    }
}

rerope_row_fn rerope_row_fn_ref(int32_t type) {
    switch (type) {
        case GGML_REROPE_KV_F32: return row_f32;
        case GGML_REROPE_KV_F16: return row_f16;
        case GGML_REROPE_KV_BF16: return row_bf16;
        case GGML_REROPE_KV_Q8_0: return row_q8_0;
        case GGML_REROPE_KV_Q4_0: return row_q4_0;
        case GGML_REROPE_KV_Q4_1: return row_q4_1;
        case GGML_REROPE_KV_Q5_0: return row_q5_0;
        case GGML_REROPE_KV_Q5_1: return row_q5_1;
        case GGML_REROPE_KV_IQ4_NL: return row_iq4_nl;
        default: return NULL;
    }
}
