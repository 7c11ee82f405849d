/* AVX-512 kernel (compiled with -mavx512f/bw/vl/dq; runs only when dispatch.c has seen
 * AVX-512F/BW/VL/DQ). 16 floats per vector: one key tile row is 4 vectors. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef __m512 rr_vec;
#define RR_ISA avx512
#define RR_VL 16
#define RR_RB 4
#define RR_KVB 4
#define RR_CB 4

static inline rr_vec rr_zero(void) { return _mm512_setzero_ps(); }
static inline rr_vec rr_load(const float * p) { return _mm512_loadu_ps(p); }
static inline void rr_store(float * p, rr_vec v) { _mm512_storeu_ps(p, v); }
static inline rr_vec rr_set1(float x) { return _mm512_set1_ps(x); }
static inline rr_vec rr_fma(rr_vec a, rr_vec b, rr_vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline rr_vec rr_mul(rr_vec a, rr_vec b) { return _mm512_mul_ps(a, b); }
static inline rr_vec rr_add(rr_vec a, rr_vec b) { return _mm512_add_ps(a, b); }
static inline rr_vec rr_sub(rr_vec a, rr_vec b) { return _mm512_sub_ps(a, b); }
static inline rr_vec rr_max(rr_vec a, rr_vec b) { return _mm512_max_ps(a, b); }
static inline float rr_hmax(rr_vec v) { return _mm512_reduce_max_ps(v); }
static inline float rr_hsum(rr_vec v) { return _mm512_reduce_add_ps(v); }
/* 2^x for x <= 0: degree-6 polynomial of the fraction, 2^n by scalef (-inf gives 0). */
static inline rr_vec rr_exp2(rr_vec x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5353362e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6184551e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503324e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022652e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
static inline rr_vec rr_load_f16(const uint16_t * p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) p));
}
static inline void rr_f16_row(float * dst, const uint16_t * src, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (src + i))));
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
    for (; i < n; i++) dst[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(src[i])));
}

#define RR_HAVE_QROWS
static inline rr_vec rr_load_i8(const int8_t * p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) p)));
}
static inline rr_vec rr_load_nib(const uint8_t * p, int hi) {
    __m128i b = _mm_loadu_si128((const __m128i *) p);
    if (hi) b = _mm_srli_epi16(b, 4);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(0x0f))));
}

#include "transpose8_avx.h"
#include "kernel_body.h"
#endif
