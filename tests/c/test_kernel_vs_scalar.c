/* Every SIMD path this CPU supports against the plain C path, and the plain C path against a
 * naive double-precision loop of the contract (src/ggml_rerope.h), on random inputs, for K/V
 * in f32, f16 and the block types the SIMD paths dequantize themselves (q8_0, q4_0, q4_1; the
 * naive loop sees the dequantized values). No Python; CI runs it under AddressSanitizer /
 * UndefinedBehaviorSanitizer. Exit status 0 = pass. */
#include "ggml_rerope.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n_q, n_kv, h, h_kv, d, n_rot, window, far_mode, group, logn, mode, causal, k_type, v_type, positions;
    float leaky;
    int chunk, sliding, sinks; /* FAR_CHUNK s; sliding window and sinks (0: off) */
} test_case;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* xorshift64*, uniform in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double) ((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}
static float nrand(void) { return (float) (sqrt(-2.0 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }

static uint16_t f32_to_f16(float f) { /* round to nearest even; inputs are small normals */
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    int32_t e = (int32_t) ((x >> 23) & 0xff) - 127 + 15;
    uint32_t m = x & 0x7fffffu;
    if (e <= 0) return (uint16_t) sign; /* tiny -> 0 (not produced by these tests' ranges often) */
    uint32_t h = sign | ((uint32_t) e << 10) | (m >> 13);
    const uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t) h;
}
static float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    uint32_t x = e == 0 ? sign : sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* One row of d floats into `type` (ggml's quantize_row_*_ref rules for the blocks), and x
 * replaced by the values the kernel will read back. */
static void encode_row(int type, float * x, int d, uint8_t * dst) {
    if (type == GGML_REROPE_KV_F32) {
        memcpy(dst, x, sizeof(float) * d);
        return;
    }
    if (type == GGML_REROPE_KV_F16) {
        for (int i = 0; i < d; i++) {
            const uint16_t h = f32_to_f16(x[i]);
            memcpy(dst + 2 * i, &h, 2);
            x[i] = f16_to_f32(h);
        }
        return;
    }
    for (int b0 = 0; b0 < d; b0 += 32, x += 32) {
        float amax = 0.0f, smax = 0.0f, lo = x[0], hi = x[0];
        for (int j = 0; j < 32; j++) {
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), smax = x[j];
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        const float d_f = type == GGML_REROPE_KV_Q8_0   ? amax / 127
                          : type == GGML_REROPE_KV_Q4_0 ? smax / -8
                                                        : (hi - lo) / 15;
        const uint16_t dh = f32_to_f16(d_f), mh = f32_to_f16(lo);
        const float dq = f16_to_f32(dh), m = f16_to_f32(mh), id = d_f != 0.0f ? 1.0f / d_f : 0.0f;
        memcpy(dst, &dh, 2);
        if (type == GGML_REROPE_KV_Q8_0) {
            for (int j = 0; j < 32; j++) {
                const int8_t qv = (int8_t) roundf(x[j] * id);
                dst[2 + j] = (uint8_t) qv;
                x[j] = qv * dq;
            }
            dst += 34;
            continue;
        }
        const int with_min = type == GGML_REROPE_KV_Q4_1, qs = with_min ? 4 : 2;
        if (with_min) memcpy(dst + 2, &mh, 2);
        int nib[32];
        for (int j = 0; j < 32; j++) {
            const int t = with_min ? (int) ((x[j] - lo) * id + 0.5f) : (int) (x[j] * id + 8.5f);
            nib[j] = t > 15 ? 15 : t;
            x[j] = with_min ? nib[j] * dq + m : (nib[j] - 8) * dq;
        }
        for (int j = 0; j < 16; j++) dst[qs + j] = (uint8_t) (nib[j] | (nib[j + 16] << 4));
        dst += qs + 16;
    }
}

/* The contract, literally: rotate q by rel(i, j) for every key, in double. */
static void naive(const test_case * c, const ggml_rerope_params * p, const float * q, const float * k, const float * v,
                  const int32_t * qp, const int32_t * kp, double * out) {
    const int d = c->d, half = c->n_rot / 2, g = c->h / c->h_kv;
    const double scale = 1.0 / sqrt((double) d);
    double * s = malloc(sizeof(double) * c->n_kv);
    double * qr = malloc(sizeof(double) * d);
    for (int i = 0; i < c->n_q; i++) {
        for (int hh = 0; hh < c->h; hh++) {
            const float * qv = q + ((size_t) i * c->h + hh) * d;
            double mx = -INFINITY;
            for (int j = 0; j < c->n_kv; j++) {
                s[j] = -INFINITY;
                if (c->causal && kp[j] > qp[i]) continue;
                const double dist = (double) qp[i] - kp[j];
                if (c->sliding > 0 && dist >= c->sliding && kp[j] >= c->sinks) continue;
                int near = dist < c->window;
                if (c->far_mode == 3) { /* Dual Chunk: same chunk, or the one before while it fits in w */
                    const int cs = c->chunk, ci = qp[i] / cs, cj = kp[j] / cs;
                    near = dist <= c->window - cs || cj == ci || (cj == ci - 1 && qp[i] % cs + cs <= c->window);
                }
                double rel = dist;
                if (!near) {
                    if (c->far_mode == 0) rel = c->window;
                    else if (c->far_mode == 1) rel = c->window + (dist - c->window) / c->leaky;
                    else if (c->far_mode == 3) rel = c->window - kp[j] % c->chunk;
                    else
                        rel = floor((double) qp[i] / c->group) - floor((double) kp[j] / c->group) + c->window -
                              floor((double) c->window / c->group);
                }
                for (int e = 0; e < d; e++) qr[e] = qv[e];
                for (int m = 0; m < half; m++) {
                    const int a = c->mode == 2 ? m : 2 * m, b = c->mode == 2 ? m + half : 2 * m + 1;
                    const double th = pow((double) p->rope_base, -2.0 * m / c->n_rot), ang = rel * th;
                    qr[a] = qv[a] * cos(ang) - qv[b] * sin(ang);
                    qr[b] = qv[a] * sin(ang) + qv[b] * cos(ang);
                }
                const float * kv = k + ((size_t) j * c->h_kv + hh / g) * d;
                double dot = 0.0;
                for (int e = 0; e < d; e++) dot += qr[e] * kv[e];
                double lam = 1.0;
                if (c->logn > 1) lam = fmax(1.0, log(qp[i] + 1.0) / log((double) c->logn));
                s[j] = dot * scale * lam;
                if (s[j] > mx) mx = s[j];
            }
            double * o = out + ((size_t) i * c->h + hh) * d;
            for (int e = 0; e < d; e++) o[e] = 0.0;
            if (mx == -INFINITY) continue;
            double sum = 0.0;
            for (int j = 0; j < c->n_kv; j++) {
                if (s[j] == -INFINITY) continue;
                const double w = exp(s[j] - mx);
                sum += w;
                const float * vv = v + ((size_t) j * c->h_kv + hh / g) * d;
                for (int e = 0; e < d; e++) o[e] += w * vv[e];
            }
            for (int e = 0; e < d; e++) o[e] /= sum;
        }
    }
    free(s);
    free(qr);
}

static double rel_err_f(const float * a, const float * b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
        den += (double) b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}
static double rel_err_d(const float * a, const double * b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int run_case(int idx, const test_case * c) {
    const size_t nq = (size_t) c->n_q * c->h * c->d, nk = (size_t) c->n_kv * c->h_kv * c->d;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    const size_t k_row = ggml_rerope_kv_row_bytes(c->k_type, c->d), v_row = ggml_rerope_kv_row_bytes(c->v_type, c->d);
    const size_t rows = (size_t) c->n_kv * c->h_kv;
    uint8_t *kb = malloc(rows * k_row), *vb = malloc(rows * v_row);
    float *ref_out = malloc(nq * 4), *out = malloc(nq * 4);
    double * exact = malloc(nq * 8);
    int32_t *qp = malloc(sizeof(int32_t) * c->n_q), *kp = malloc(sizeof(int32_t) * c->n_kv);
    for (size_t i = 0; i < nq; i++) q[i] = nrand();
    for (size_t i = 0; i < nk; i++) {
        k[i] = nrand();
        v[i] = nrand();
    }
    for (size_t r = 0; r < rows; r++) { /* the naive loop sees the values the kernel reads */
        encode_row(c->k_type, k + r * c->d, c->d, kb + r * k_row);
        encode_row(c->v_type, v + r * c->d, c->d, vb + r * v_row);
    }
    for (int j = 0; j < c->n_kv; j++) kp[j] = c->positions ? 3 * j + (j % 5) : j; /* gapped when asked */
    for (int i = 0; i < c->n_q; i++)
        qp[i] = c->positions ? (int32_t) (urand() * (3.0 * c->n_kv + 10)) : c->n_kv - c->n_q + i;

    ggml_rerope_params p = ggml_rerope_default_params(c->d);
    p.n_rot = c->n_rot;
    p.rope_mode = c->mode;
    p.window = c->window;
    p.far_mode = c->far_mode;
    p.leaky_k = c->leaky;
    p.group_size = c->group;
    p.logn_train_len = c->logn;
    p.causal = c->causal;
    p.chunk_len = c->chunk;
    p.sliding_window = c->sliding;
    p.sink_tokens = c->sinks;
    int fails = 0;

    ggml_rerope_set_simd(GGML_REROPE_SIMD_SCALAR);
    ggml_rerope_attn_call call = {.params = p,
                                  .q = q,
                                  .k = kb,
                                  .v = vb,
                                  .out = ref_out,
                                  .q_pos = qp,
                                  .k_pos = kp,
                                  .n_q = c->n_q,
                                  .n_head = c->h,
                                  .n_kv = c->n_kv,
                                  .n_head_kv = c->h_kv,
                                  .k_type = c->k_type,
                                  .v_type = c->v_type};
    ggml_rerope_status st = ggml_rerope_attn_host(&call, 3);
    if (st != GGML_REROPE_OK) {
        printf("case %d: scalar call failed: %s\n", idx, ggml_rerope_last_error());
        fails++;
    } else {
        naive(c, &p, q, k, v, qp, kp, exact);
        const double e = rel_err_d(ref_out, exact, nq);
        printf("case %2d scalar vs naive double loop: rel err %.2e\n", idx, e);
        if (!(e < 1e-4)) fails++;
    }
    for (int s = GGML_REROPE_SIMD_AVX2; s <= GGML_REROPE_SIMD_NEON; s++) {
        if (!ggml_rerope_simd_supported(s)) continue;
        ggml_rerope_set_simd(s);
        memset(out, 0, nq * 4);
        call.out = out;
        st = ggml_rerope_attn_host(&call, 2);
        const double e = st == GGML_REROPE_OK ? rel_err_f(out, ref_out, nq) : INFINITY;
        printf("case %2d %-6s vs scalar: rel err %.2e\n", idx, ggml_rerope_simd_name(s), e);
        if (!(e < 1e-5)) fails++;
    }
    ggml_rerope_set_simd(GGML_REROPE_SIMD_AUTO);
    free(q), free(k), free(v), free(kb), free(vb), free(ref_out), free(out), free(exact), free(qp), free(kp);
    return fails;
}

int main(void) {
    enum {
        T32 = GGML_REROPE_KV_F32,
        T16 = GGML_REROPE_KV_F16,
        Q8 = GGML_REROPE_KV_Q8_0,
        Q40 = GGML_REROPE_KV_Q4_0,
        Q41 = GGML_REROPE_KV_Q4_1
    };
    /* n_q n_kv h h_kv d n_rot w far G logn mode causal k_type v_type positions leaky */
    const test_case cases[] = {
        {1, 1, 1, 1, 64, 64, 1, 0, 1, 0, 0, 1, T32, T32, 0, 1.0f},
        {7, 7, 4, 2, 64, 64, 3, 0, 1, 0, 0, 1, T16, T16, 0, 1.0f},
        {130, 130, 4, 1, 64, 64, 63, 0, 1, 0, 0, 1, T32, T32, 0, 1.0f},
        {130, 130, 9, 3, 64, 64, 64, 1, 1, 0, 2, 1, T16, T16, 0, 2.0f},
        {150, 150, 8, 2, 128, 128, 65, 2, 4, 32, 0, 1, T16, T16, 0, 1.0f},
        {100, 100, 4, 4, 80, 32, 30, 1, 1, 0, 2, 1, T32, T32, 0, 16.0f},
        {90, 90, 2, 2, 24, 24, 200, 0, 1, 0, 0, 0, T32, T32, 0, 1.0f},
        {40, 200, 4, 2, 64, 64, 70, 2, 3, 0, 0, 1, T32, T32, 1, 1.0f},
        {2, 1500, 9, 3, 64, 64, 500, 0, 1, 0, 0, 1, T16, T16, 0, 1.0f},  /* split-K decode */
        {3, 1200, 8, 2, 128, 128, 300, 1, 1, 64, 2, 1, T16, T16, 0, 4.0f}, /* split-K, leaky, log-n */
        {1, 1100, 4, 1, 64, 64, 100, 2, 8, 0, 0, 1, T32, T32, 1, 1.0f},   /* split-K, group, gapped */
        {1, 2100, 8, 2, 128, 128, 300, 0, 1, 0, 0, 1, T16, T16, 0, 1.0f}, /* split-K decode fast path, f16 */
        {1, 1500, 12, 3, 64, 64, 200, 0, 1, 0, 2, 1, T32, T32, 0, 1.0f},  /* split-K decode fast path, f32 */
        /* block types: prefill, split-K, the decode fast path from staged rows, mixed K/V types */
        {130, 130, 9, 3, 64, 64, 64, 1, 1, 0, 2, 1, Q8, Q8, 0, 2.0f},
        {77, 77, 4, 2, 128, 128, 30, 2, 4, 32, 0, 1, Q40, Q40, 0, 1.0f},
        {40, 200, 4, 2, 64, 64, 70, 0, 1, 0, 0, 1, Q41, Q8, 1, 1.0f},
        {3, 1200, 8, 2, 128, 128, 300, 1, 1, 64, 2, 1, Q40, Q41, 0, 4.0f},
        {1, 2100, 8, 2, 128, 128, 300, 0, 1, 0, 0, 1, Q8, Q40, 0, 1.0f},
        {1, 1500, 12, 3, 96, 96, 200, 0, 1, 0, 2, 1, Q8, Q8, 0, 1.0f},
        {1, 1500, 4, 1, 64, 64, 200, 0, 1, 0, 0, 1, T32, T16, 0, 1.0f},
        /* Dual Chunk (chunks at tile edges), the sliding window with sinks, both; prefill and split-K */
        {200, 200, 4, 2, 64, 64, 127, 3, 1, 0, 0, 1, T16, T16, 0, 1.0f, 64, 0, 0},
        {130, 130, 9, 3, 64, 64, 90, 3, 1, 64, 2, 1, Q8, Q8, 0, 1.0f, 61, 0, 0},
        {40, 200, 4, 2, 64, 64, 70, 3, 1, 0, 0, 0, T32, T32, 1, 1.0f, 50, 0, 0},
        {3, 1200, 8, 2, 128, 128, 300, 3, 1, 0, 2, 1, T16, T16, 0, 1.0f, 200, 0, 0},
        {300, 300, 4, 2, 64, 64, 70, 0, 1, 0, 0, 1, T16, T16, 0, 1.0f, 0, 75, 5},
        {2, 2100, 8, 2, 128, 128, 512, 0, 1, 0, 0, 1, T16, T16, 0, 1.0f, 0, 512, 10},
        {2, 1500, 4, 1, 64, 64, 300, 1, 1, 0, 0, 1, Q40, Q40, 0, 4.0f, 0, 400, 64},
        {1, 1100, 4, 1, 64, 64, 300, 3, 1, 0, 0, 1, T32, T32, 1, 1.0f, 200, 600, 3},
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) fails += run_case((int) i, &cases[i]);
    printf("%s (%d failures)\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}
