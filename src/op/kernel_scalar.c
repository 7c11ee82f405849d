/* Plain C kernel: the tiled kernel of kernel_body.h with one-float "vectors".
 * Also the reference the SIMD paths are tested against (tests/c/test_kernel_vs_scalar.c). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kv_dequant.h"

typedef float rr_vec;
#define RR_ISA scalar
#define RR_VL 1
#define RR_RB 4
#define RR_KVB 4
#define RR_CB 4

static inline rr_vec rr_zero(void) { return 0.0f; }
static inline rr_vec rr_load(const float * p) { return *p; }
static inline void rr_store(float * p, rr_vec v) { *p = v; }
static inline rr_vec rr_set1(float x) { return x; }
static inline rr_vec rr_fma(rr_vec a, rr_vec b, rr_vec c) { return a * b + c; }
static inline rr_vec rr_mul(rr_vec a, rr_vec b) { return a * b; }
static inline rr_vec rr_add(rr_vec a, rr_vec b) { return a + b; }
static inline rr_vec rr_sub(rr_vec a, rr_vec b) { return a - b; }
static inline rr_vec rr_max(rr_vec a, rr_vec b) { return a > b ? a : b; }
static inline float rr_hmax(rr_vec v) { return v; }
static inline float rr_hsum(rr_vec v) { return v; }
static inline rr_vec rr_exp2(rr_vec x) { return exp2f(x); }

static inline rr_vec rr_load_f16(const uint16_t * p) { return rerope_half_to_float(*p); }

static inline void rr_f16_row(float * dst, const uint16_t * src, int n) {
    for (int i = 0; i < n; i++) dst[i] = rerope_half_to_float(src[i]);
}

#include "kernel_body.h"
