/* NEON kernel (compiled only on arm64, where NEON and FP16 conversion are baseline). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>

typedef float32x4_t rr_vec;
#define RR_ISA neon
#define RR_VL 4
#define RR_RB 4
#define RR_KVB 4
#define RR_CB 4

static inline rr_vec rr_zero(void) { return vdupq_n_f32(0.0f); }
static inline rr_vec rr_load(const float * p) { return vld1q_f32(p); }
static inline void rr_store(float * p, rr_vec v) { vst1q_f32(p, v); }
static inline rr_vec rr_set1(float x) { return vdupq_n_f32(x); }
static inline rr_vec rr_fma(rr_vec a, rr_vec b, rr_vec c) { return vfmaq_f32(c, a, b); }
static inline rr_vec rr_mul(rr_vec a, rr_vec b) { return vmulq_f32(a, b); }
static inline rr_vec rr_add(rr_vec a, rr_vec b) { return vaddq_f32(a, b); }
static inline rr_vec rr_sub(rr_vec a, rr_vec b) { return vsubq_f32(a, b); }
static inline rr_vec rr_max(rr_vec a, rr_vec b) { return vmaxq_f32(a, b); }
static inline float rr_hmax(rr_vec v) { return vmaxvq_f32(v); }
static inline float rr_hsum(rr_vec v) { return vaddvq_f32(v); }
/* 2^x for x <= 0: degree-6 polynomial of the fraction, 2^n through the exponent bits. */
static inline rr_vec rr_exp2(rr_vec x) {
    const uint32x4_t live = vcgtq_f32(x, vdupq_n_f32(-126.0f));
    x = vmaxq_f32(x, vdupq_n_f32(-126.0f));
    const float32x4_t n = vrndnq_f32(x);
    const float32x4_t f = vsubq_f32(x, n);
    float32x4_t p = vdupq_n_f32(1.5353362e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3398874e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(9.6184551e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(5.5503324e-2f), p, f);
    p = vfmaq_f32(vdupq_n_f32(2.4022652e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(6.9314718e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, f);
    const int32x4_t e = vshlq_n_s32(vcvtq_s32_f32(n), 23);
    const float32x4_t r = vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), e));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(r), live));
}
static inline rr_vec rr_load_f16(const uint16_t * p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline void rr_f16_row(float * dst, const uint16_t * src, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    for (; i < n; i++) {
        __fp16 h;
        __builtin_memcpy(&h, src + i, 2);
        dst[i] = (float) h;
    }
}

#include "kernel_body.h"
#endif
