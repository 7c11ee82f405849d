/* AVX2 + FMA + F16C kernel (this file is compiled with -mavx2 -mfma -mf16c; it runs only
 * when dispatch.c has seen those features). */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef __m256 rr_vec;
#define RR_ISA avx2
#define RR_VL 8
#define RR_RB 4
#define RR_KVB 2
#define RR_CB 2

static inline rr_vec rr_zero(void) { return _mm256_setzero_ps(); }
static inline rr_vec rr_load(const float * p) { return _mm256_loadu_ps(p); }
static inline void rr_store(float * p, rr_vec v) { _mm256_storeu_ps(p, v); }
static inline rr_vec rr_set1(float x) { return _mm256_set1_ps(x); }
static inline rr_vec rr_fma(rr_vec a, rr_vec b, rr_vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline rr_vec rr_mul(rr_vec a, rr_vec b) { return _mm256_mul_ps(a, b); }
static inline rr_vec rr_add(rr_vec a, rr_vec b) { return _mm256_add_ps(a, b); }
static inline rr_vec rr_sub(rr_vec a, rr_vec b) { return _mm256_sub_ps(a, b); }
static inline rr_vec rr_max(rr_vec a, rr_vec b) { return _mm256_max_ps(a, b); }
static inline float rr_hmax(rr_vec v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}
static inline float rr_hsum(rr_vec v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}
/* 2^x for x <= 0 (scores minus their max): x = n + f, |f| <= 0.5, 2^f by a degree-6
 * polynomial (rel. error ~2e-7), 2^n through the exponent bits. -inf gives 0. */
static inline rr_vec rr_exp2(rr_vec x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.5353362e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3398874e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6184551e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5503324e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022652e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const __m256 r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    /* below -126 the true value is < 2^-126: flush to 0 */
    return _mm256_and_ps(r, _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_GT_OQ));
}
static inline rr_vec rr_load_f16(const uint16_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p)); }
static inline void rr_f16_row(float * dst, const uint16_t * src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
    for (; i < n; i++) dst[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(src[i])));
}

#define RR_HAVE_QROWS
static inline rr_vec rr_load_i8(const int8_t * p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) p)));
}
static inline rr_vec rr_load_nib(const uint8_t * p, int hi) {
    __m128i b = _mm_loadl_epi64((const __m128i *) p);
    if (hi) b = _mm_srli_epi16(b, 4);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(0x0f))));
}

#include "transpose8_avx.h"
#include "kernel_body.h"
#endif
