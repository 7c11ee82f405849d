/* The tiled ReRoPE attention kernel, written once. Each kernel_<isa>.c defines the
 * vector primitives below and includes this file:
 *
 *   RR_ISA            suffix of the exported function (rerope_kernel_<RR_ISA>)
 *   RR_VL             floats per vector; rr_vec the vector type
 *   RR_RB, RR_KVB     register blocking: query rows x key vectors (QK), RR_CB value vectors (PV)
 *   rr_zero() rr_load(p) rr_store(p, v) rr_set1(x) rr_fma(a, b, c) = a*b + c
 *   rr_mul rr_add rr_sub rr_max rr_hmax(v) rr_hsum(v) rr_exp2(v)
 *   rr_f16_row(float * dst, const uint16_t * src, int n)   f16 -> f32; rr_load_f16(p): one vector
 *   optional RR_HAVE_TRANSPOSE8: rr_transpose8(src, src_stride, dst, dst_stride)
 *   optional RR_HAVE_QROWS (vector block loaders for q8_0 / q4_0 / q4_1; else the reference ones):
 *     rr_load_i8(p) RR_VL int8; rr_load_nib(p, hi) the low (hi 0) or high (hi 1) nibbles of RR_VL
 *     bytes, each as a float (a block's scale: rerope_half_at, once per 32 elements)
 *
 * Work item: (KV head, tile of query tokens) in prefill - all query heads of the KV
 * group are rows of one item so each K/V tile is converted once for them - or
 * (KV head, key chunk) in split-K decode. Per key tile (RR_BK keys) the distance range
 * picks NEAR (<R_i q, R_j k>), FAR (<R_far(i) q, R_farkey(j) k>; CLAMP: key unrotated)
 * or MIXED (both, chosen per element). Scores are in log2 units (q pre-scaled by
 * scale * lambda_i * log2(e)) so the online softmax uses exp2.
 *
 * Prefill tiles are staged: K/V rows converted to f32, K transposed to [d][BK] (and rotated
 * per path) so a score row is broadcast(q) FMA key rows, no horizontal sums. Decode (one
 * block of <= RR_RB rows) reads full far-clamp tiles straight from the cache instead (f16/f32;
 * other types are converted to f32 rows first, as a prefill tile, then read the same way).
 *
 * K and V are read through a row loader per type (rr_row_loader): every cached row is
 * converted once per tile into the per-thread workspace, never into a copy of the cache.
 */
#include "kernel.h"
#include "kv_dequant.h"

#include <math.h>
#include <string.h>

#define RR_CAT2(a, b) a##_##b
#define RR_CAT(a, b) RR_CAT2(a, b)
#define RR_FN(name) RR_CAT(name, RR_ISA)
#define RR_NV (RR_BK / RR_VL) /* vectors per key tile row */
#define RR_PF_ROWS 8 /* decode kernels: prefetch distance in key rows of one head */
#ifndef RR_PF_BYTES
#define RR_PF_BYTES 16384 /* software prefetch distance */
#endif
#define RR_INLINE static inline __attribute__((always_inline))

enum { RR_NEAR = 0, RR_FAR = 1 };

/* Per-thread state of one kernel call (lives on the stack; buffers in the workspace). */
typedef struct {
    float * f;
    rerope_ws_layout L;
    double *ac[2], *as[2];    /* key-rotation anchors: cos/sin(A * theta), per path */
    double *bc[2], *bs[2];    /* cos/sin of the angle a tile step of RR_BK keys adds */
    double *rc[2], *rs[2];    /* query-rotation cos/sin of the last token, per path */
    double *t1c, *t1s;        /* cos/sin(theta): one position step */
    int anc_ok[2];
    int32_t anc_p0[2];
    int row_ok[2];
    double row_a[2];          /* angle position of rc/rs */
    int q_ok[2];              /* Qn / Qf ready for the current item */
    int item_h, item_i0;      /* current item's query block, for reuse */
    rerope_row_fn k_row, v_row; /* row loaders of job->k_type / v_type */
    int k_row_bytes, v_row_bytes;
    int kv_direct;            /* K and V of one type the decode kernels read in place (f16/f32) */
} RR_FN(rr_state);

#define ST RR_FN(rr_state)

/* ---------------------------------------------------------------- row loaders */

#ifdef RR_HAVE_QROWS
static void RR_FN(rr_row_q8_0)(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q8_0) {
        const rr_vec d = rr_set1(rerope_half_at(b));
        const int8_t * qs = (const int8_t *) (b + RR_Q8_0_QS);
        for (int j = 0; j < RR_QK; j += RR_VL) rr_store(dst + i + j, rr_mul(d, rr_load_i8(qs + j)));
    }
}

/* element j < 16 is the low nibble of byte j, element j + 16 its high nibble (RR_VL divides 16) */
static void RR_FN(rr_row_q4_0)(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    const rr_vec eight = rr_set1(8.0f);
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q4_0) {
        const rr_vec d = rr_set1(rerope_half_at(b));
        const uint8_t * qs = b + RR_Q4_0_QS;
        for (int j = 0; j < RR_QK; j += RR_VL)
            rr_store(dst + i + j, rr_mul(rr_sub(rr_load_nib(qs + (j & 15), j >= 16), eight), d));
    }
}

static void RR_FN(rr_row_q4_1)(float * dst, const void * src, int n) {
    const uint8_t * b = (const uint8_t *) src;
    for (int i = 0; i < n; i += RR_QK, b += RR_BLOCK_Q4_1) {
        const rr_vec d = rr_set1(rerope_half_at(b)), m = rr_set1(rerope_half_at(b + 2));
        const uint8_t * qs = b + RR_Q4_1_QS;
        for (int j = 0; j < RR_QK; j += RR_VL)
            rr_store(dst + i + j, rr_add(rr_mul(rr_load_nib(qs + (j & 15), j >= 16), d), m));
    }
}
#endif

static void RR_FN(rr_row_f16)(float * dst, const void * src, int n) { rr_f16_row(dst, (const uint16_t *) src, n); }

/* This ISA's loader of a type: its own for the types it vectorizes, else the reference. */
static rerope_row_fn RR_FN(rr_row_loader)(int32_t type) {
    switch (type) {
        case GGML_REROPE_KV_F16: return RR_FN(rr_row_f16);
#ifdef RR_HAVE_QROWS
        case GGML_REROPE_KV_Q8_0: return RR_FN(rr_row_q8_0);
        case GGML_REROPE_KV_Q4_0: return RR_FN(rr_row_q4_0);
        case GGML_REROPE_KV_Q4_1: return RR_FN(rr_row_q4_1);
#endif
        default: return rerope_row_fn_ref(type);
    }
}

/* ---------------------------------------------------------------- setup */

static void RR_FN(rr_setup)(ST * st, const rerope_job * job, void * ws) {
    st->f = (float *) ws;
    st->L = rerope_layout(job);
    const int hf = job->half ? job->half : 1;
    double * a = (double *) (st->f + st->L.anchor);
    for (int p = 0; p < 2; p++) {
        st->ac[p] = a, a += hf;
        st->as[p] = a, a += hf;
        st->bc[p] = a, a += hf;
        st->bs[p] = a, a += hf;
        st->rc[p] = a, a += hf;
        st->rs[p] = a, a += hf;
        st->anc_ok[p] = 0;
        st->row_ok[p] = 0;
        st->q_ok[p] = 0;
    }
    st->t1c = a, a += hf;
    st->t1s = a, a += hf;
    st->item_h = -1;
    st->item_i0 = -1;
    st->k_row = RR_FN(rr_row_loader)(job->k_type);
    st->v_row = RR_FN(rr_row_loader)(job->v_type);
    st->k_row_bytes = (int) ggml_rerope_kv_row_bytes(job->k_type, job->d);
    st->v_row_bytes = (int) ggml_rerope_kv_row_bytes(job->v_type, job->d);
    st->kv_direct =
        job->k_type == job->v_type && (job->k_type == GGML_REROPE_KV_F16 || job->k_type == GGML_REROPE_KV_F32);

    const float kinv = job->p.far_mode == GGML_REROPE_FAR_LEAKY ? 1.0f / job->p.leaky_k : 1.0f;
    float *stn_c = st->f + st->L.stn_c, *stn_s = st->f + st->L.stn_s;
    float *stl_c = st->f + st->L.stl_c, *stl_s = st->f + st->L.stl_s;
    for (int m = 0; m < job->half; m++) {
        const double th = job->theta[m];
        st->t1c[m] = cos(th);
        st->t1s[m] = sin(th);
        st->bc[RR_NEAR][m] = cos(RR_BK * th);
        st->bs[RR_NEAR][m] = sin(RR_BK * th);
        st->bc[RR_FAR][m] = cos(RR_BK * th * kinv);
        st->bs[RR_FAR][m] = sin(RR_BK * th * kinv);
        /* step tables by angle addition in double: cos/sin(t * theta), (t / k) * theta */
        const double lc = cos(th * kinv), ls = sin(th * kinv);
        double cn = 1.0, sn = 0.0, cl = 1.0, sl = 0.0;
        for (int t = 0; t < RR_BK; t++) {
            stn_c[m * RR_BK + t] = (float) cn;
            stn_s[m * RR_BK + t] = (float) sn;
            stl_c[m * RR_BK + t] = (float) cl;
            stl_s[m * RR_BK + t] = (float) sl;
            double x = cn * st->t1c[m] - sn * st->t1s[m];
            sn = cn * st->t1s[m] + sn * st->t1c[m];
            cn = x;
            x = cl * lc - sl * ls;
            sl = cl * ls + sl * lc;
            cl = x;
        }
    }
    /* padding columns of the row-major tiles stay zero for the whole call */
    memset(st->f + st->L.kr, 0, sizeof(float) * RR_BK * (size_t) job->dp * st->L.n_hb);
    memset(st->f + st->L.vt, 0, sizeof(float) * RR_BK * (size_t) job->dp * st->L.n_hb);
}

/* ---------------------------------------------------------------- angles */

/* Angle position of the far-path query rotation for a query at position i. */
static inline double RR_FN(rr_far_q_angle)(const rerope_job * job, int32_t i) {
    const ggml_rerope_params * p = &job->p;
    switch (p->far_mode) {
        case GGML_REROPE_FAR_LEAKY: return (double) i / p->leaky_k + p->window - (double) p->window / p->leaky_k;
        case GGML_REROPE_FAR_GROUP:
            return (double) (i / p->group_size) + p->window - (double) (p->window / p->group_size);
        default: return (double) p->window;
    }
}

/* Angle position of the far-path key rotation (LEAKY, GROUP, CHUNK). */
static inline double RR_FN(rr_far_k_angle)(const rerope_job * job, int32_t j) {
    if (job->p.far_mode == GGML_REROPE_FAR_LEAKY) return (double) j / job->p.leaky_k;
    if (job->p.far_mode == GGML_REROPE_FAR_CHUNK) return (double) (j % job->p.chunk_len);
    return (double) (j / job->p.group_size);
}

/* cos/sin(A * theta) into (c, s); steps by one position from the last value when possible. */
static void RR_FN(rr_row_angle)(ST * st, const rerope_job * job, int path, double A) {
    double *c = st->rc[path], *s = st->rs[path];
    if (st->row_ok[path] && A == st->row_a[path]) return;
    if (st->row_ok[path] && A == st->row_a[path] + 1.0) {
        for (int m = 0; m < job->half; m++) {
            const double x = c[m] * st->t1c[m] - s[m] * st->t1s[m];
            s[m] = c[m] * st->t1s[m] + s[m] * st->t1c[m];
            c[m] = x;
        }
    } else {
        for (int m = 0; m < job->half; m++) {
            c[m] = cos(A * job->theta[m]);
            s[m] = sin(A * job->theta[m]);
        }
    }
    st->row_ok[path] = 1;
    st->row_a[path] = A;
}

/* dst = R(c, s) src * mul, over the pairs of the rope mode; dims >= n_rot copied. */
static void RR_FN(rr_rotate_row)(const rerope_job * job, float * dst, const float * src, const double * c,
                                 const double * s, float mul) {
    const int half = job->half, neox = job->p.rope_mode == GGML_REROPE_MODE_NEOX;
    for (int m = 0; m < half; m++) {
        const int a = neox ? m : 2 * m, b = neox ? m + half : 2 * m + 1;
        const double xa = src[a], xb = src[b];
        dst[a] = (float) ((xa * c[m] - xb * s[m]) * mul);
        dst[b] = (float) ((xa * s[m] + xb * c[m]) * mul);
    }
    for (int e = job->n_rot; e < job->d; e++) dst[e] = src[e] * mul;
    for (int e = job->d; e < job->dp; e++) dst[e] = 0.0f;
}

/* Rotated, pre-scaled queries of the current item (KV heads h0 .. h0+nh-1) for one path. */
static void RR_FN(rr_prep_q)(ST * st, const rerope_job * job, int path, int h0, int nh, int i0, int nt) {
    float * Q = st->f + (path == RR_NEAR ? st->L.qn : st->L.qf);
    const float * lam = st->f + st->L.tok_lambda;
    const int dp = job->dp, gq = job->gq, rp = st->L.rows_pad;
    for (int tl = 0; tl < nt; tl++) {
        const int32_t pi = rerope_qpos(job, i0 + tl);
        const double A = path == RR_NEAR ? (double) pi : RR_FN(rr_far_q_angle)(job, pi);
        RR_FN(rr_row_angle)(st, job, path, A);
        for (int hb = 0; hb < nh; hb++) {
            for (int g = 0; g < gq; g++) {
                const float * src = (const float *) (job->q + (size_t) (i0 + tl) * job->q_nb_tok +
                                                     (size_t) ((h0 + hb) * gq + g) * job->q_nb_head);
                float * row = Q + ((size_t) hb * rp + tl * gq + g) * dp;
                RR_FN(rr_rotate_row)(job, row, src, st->rc[path], st->rs[path], lam[tl]);
                if (job->k_hadamard && rerope_path_keeps_keys(job, path == RR_FAR))
                    rerope_hadamard_row(row, job->d, job->k_hadamard);
            }
        }
    }
    for (int hb = 0; hb < nh; hb++)
        for (int r = nt * gq; r < rp; r++) memset(Q + ((size_t) hb * rp + r) * dp, 0, sizeof(float) * dp);
    st->q_ok[path] = 1;
}

/* cos/sin of the current key tile for a path into csc/css [half][RR_BK]. */
static void RR_FN(rr_tile_cs)(ST * st, const rerope_job * job, int path, const int32_t * kp, int nk) {
    float * csc = st->f + (path == RR_NEAR ? st->L.csc : st->L.csc2);
    float * css = st->f + (path == RR_NEAR ? st->L.css : st->L.css2);
    const int half = job->half;
    const int group = path == RR_FAR && job->p.far_mode == GGML_REROPE_FAR_GROUP;
    const int chunk = path == RR_FAR && job->p.far_mode == GGML_REROPE_FAR_CHUNK;
    int contiguous = 1;
    for (int t = 1; t < nk; t++) contiguous &= kp[t] == kp[0] + t;
    /* chunk angles j mod s step by one position inside a chunk only */
    if (chunk) contiguous &= kp[0] % job->p.chunk_len + RR_BK <= job->p.chunk_len;
    if (!contiguous) {
        for (int m = 0; m < half; m++) {
            for (int t = 0; t < RR_BK; t++) {
                const double A = t >= nk ? 0.0 : path == RR_NEAR ? (double) kp[t] : RR_FN(rr_far_k_angle)(job, kp[t]);
                csc[m * RR_BK + t] = (float) cos(A * job->theta[m]);
                css[m * RR_BK + t] = (float) sin(A * job->theta[m]);
            }
        }
        return;
    }
    /* anchor = cos/sin of the tile's first key; stepped from the previous tile when it follows it */
    const int32_t p0 = kp[0];
    double *ac = st->ac[path], *as = st->as[path];
    if (!(st->anc_ok[path] && st->anc_p0[path] == p0)) {
        if (st->anc_ok[path] && !group && !chunk && p0 == st->anc_p0[path] + RR_BK) {
            for (int m = 0; m < half; m++) {
                const double x = ac[m] * st->bc[path][m] - as[m] * st->bs[path][m];
                as[m] = ac[m] * st->bs[path][m] + as[m] * st->bc[path][m];
                ac[m] = x;
            }
        } else {
            const double A = path == RR_NEAR ? (double) p0 : RR_FN(rr_far_k_angle)(job, p0);
            for (int m = 0; m < half; m++) {
                ac[m] = cos(A * job->theta[m]);
                as[m] = sin(A * job->theta[m]);
            }
        }
        st->anc_ok[path] = 1;
        st->anc_p0[path] = p0;
    }
    if (group) {
        const int G = job->p.group_size, off = p0 % G;
        const float *sc = st->f + st->L.stn_c, *ss = st->f + st->L.stn_s;
        for (int m = 0; m < half; m++) {
            const float cA = (float) ac[m], sA = (float) as[m];
            for (int t = 0; t < RR_BK; t++) {
                const int e = (off + t) / G;
                csc[m * RR_BK + t] = cA * sc[m * RR_BK + e] - sA * ss[m * RR_BK + e];
                css[m * RR_BK + t] = sA * sc[m * RR_BK + e] + cA * ss[m * RR_BK + e];
            }
        }
        return;
    }
    const float * sc = st->f + (path == RR_NEAR ? st->L.stn_c : st->L.stl_c);
    const float * ss = st->f + (path == RR_NEAR ? st->L.stn_s : st->L.stl_s);
    for (int m = 0; m < half; m++) {
        const rr_vec cA = rr_set1((float) ac[m]), sA = rr_set1((float) as[m]);
        for (int v = 0; v < RR_NV; v++) {
            const size_t o = (size_t) m * RR_BK + v * RR_VL;
            const rr_vec c = rr_load(sc + o), s = rr_load(ss + o);
            rr_store(csc + o, rr_sub(rr_mul(cA, c), rr_mul(sA, s)));
            rr_store(css + o, rr_fma(sA, c, rr_mul(cA, s)));
        }
    }
}

/* ---------------------------------------------------------------- tiles */

/* Converts keys and values [j0, j0+nk) of KV heads h0 .. h0+nh-1 to f32 rows: kr[hb] and
 * vt[hb], each [RR_BK][dp]; rows past nk are zero. All heads of a token are read together,
 * so the head-interleaved cache is streamed in address order. */
static void RR_FN(rr_load_rows)(ST * st, const rerope_job * job, int h0, int nh, int j0, int nk) {
    const int d = job->d, dp = job->dp;
    const size_t tile = (size_t) RR_BK * dp;
    const int kb = st->k_row_bytes, vb = st->v_row_bytes;
    /* prefetch about RR_PF_BYTES of K and V ahead of the rows being converted */
    int pf = (int) (RR_PF_BYTES / ((size_t) (kb + vb) * nh));
    pf = pf < 1 ? 1 : pf;
    for (int t = 0; t < nk; t++) {
        const char * kt = job->k + (size_t) (j0 + t) * job->k_nb_tok;
        const char * vtk = job->v + (size_t) (j0 + t) * job->v_nb_tok;
        if (j0 + t + pf < job->n_kv) {
            for (int hb = 0; hb < nh; hb++) {
                const char * kpf = kt + (size_t) pf * job->k_nb_tok + (size_t) (h0 + hb) * job->k_nb_head;
                const char * vpf = vtk + (size_t) pf * job->v_nb_tok + (size_t) (h0 + hb) * job->v_nb_head;
                for (int b = 0; b < kb; b += 64) __builtin_prefetch(kpf + b, 0, 3);
                for (int b = 0; b < vb; b += 64) __builtin_prefetch(vpf + b, 0, 3);
            }
        }
        for (int hb = 0; hb < nh; hb++) {
            const char * ks = kt + (size_t) (h0 + hb) * job->k_nb_head;
            const char * vs = vtk + (size_t) (h0 + hb) * job->v_nb_head;
            float * kd = st->f + st->L.kr + hb * tile + (size_t) t * dp;
            float * vd = st->f + st->L.vt + hb * tile + (size_t) t * dp;
            st->k_row(kd, ks, d);
            st->v_row(vd, vs, d);
        }
    }
    if (nk < RR_BK) {
        for (int hb = 0; hb < nh; hb++) {
            memset(st->f + st->L.kr + hb * tile + (size_t) nk * dp, 0, sizeof(float) * (size_t) (RR_BK - nk) * dp);
            memset(st->f + st->L.vt + hb * tile + (size_t) nk * dp, 0, sizeof(float) * (size_t) (RR_BK - nk) * dp);
        }
    }
}

/* kraw [d][RR_BK] = transpose of head block hb's key rows. */
static void RR_FN(rr_transpose_tile)(ST * st, const rerope_job * job, int hb) {
    const int d = job->d, dp = job->dp;
    const float * kr = st->f + st->L.kr + (size_t) hb * RR_BK * dp;
    float * kraw = st->f + st->L.kraw;
#ifdef RR_HAVE_TRANSPOSE8
    for (int c0 = 0; c0 < d; c0 += 8)
        for (int t0 = 0; t0 < RR_BK; t0 += 8)
            rr_transpose8(kr + (size_t) t0 * dp + c0, dp, kraw + (size_t) c0 * RR_BK + t0, RR_BK);
#else
    for (int t = 0; t < RR_BK; t++)
        for (int c = 0; c < d; c++) kraw[(size_t) c * RR_BK + t] = kr[(size_t) t * dp + c];
#endif
}

/* dst[d][BK] = src[d][BK] (kraw, or its unrotated copy) rotated by the tile's cos/sin of a path
 * (pairs of the rope mode); dst may be src. */
static void RR_FN(rr_rotate_tile)(const ST * st, const rerope_job * job, int path, const float * src, float * dst) {
    const float * csc = st->f + (path == RR_NEAR ? st->L.csc : st->L.csc2);
    const float * css = st->f + (path == RR_NEAR ? st->L.css : st->L.css2);
    const int half = job->half, neox = job->p.rope_mode == GGML_REROPE_MODE_NEOX;
    for (int m = 0; m < half; m++) {
        const int a = neox ? m : 2 * m, b = neox ? m + half : 2 * m + 1;
        for (int v = 0; v < RR_NV; v++) {
            const int o = v * RR_VL;
            const rr_vec xa = rr_load(src + a * RR_BK + o), xb = rr_load(src + b * RR_BK + o);
            const rr_vec c = rr_load(csc + m * RR_BK + o), s = rr_load(css + m * RR_BK + o);
            rr_store(dst + a * RR_BK + o, rr_sub(rr_mul(xa, c), rr_mul(xb, s)));
            rr_store(dst + b * RR_BK + o, rr_fma(xa, s, rr_mul(xb, c)));
        }
    }
    if (job->d > job->n_rot && dst != src)
        memcpy(dst + (size_t) job->n_rot * RR_BK, src + (size_t) job->n_rot * RR_BK,
               sizeof(float) * RR_BK * (size_t) (job->d - job->n_rot));
}

/* dst[d][BK] = H_b of src's columns (each key of the tile), b = job->k_hadamard: the keys as they
 * were before they were stored rotated. Butterflies between rows: whole-vector adds. */
static void RR_FN(rr_unrotate_tile)(const rerope_job * job, const float * src, float * dst) {
    const int d = job->d, b = job->k_hadamard;
    const rr_vec norm = rr_set1(1.0f / sqrtf((float) b));
    for (int h = 1; h < b; h *= 2) {
        const float * from = h == 1 ? src : dst;
        for (int i = 0; i < d; i++) {
            if (i & h) continue;
            for (int v = 0; v < RR_NV; v++) {
                const int o = v * RR_VL;
                const rr_vec x = rr_load(from + (size_t) i * RR_BK + o),
                             y = rr_load(from + (size_t) (i + h) * RR_BK + o);
                const int last = 2 * h >= b;
                rr_store(dst + (size_t) i * RR_BK + o, last ? rr_mul(rr_add(x, y), norm) : rr_add(x, y));
                rr_store(dst + (size_t) (i + h) * RR_BK + o, last ? rr_mul(rr_sub(x, y), norm) : rr_sub(x, y));
            }
        }
    }
}

/* S[rows][BK] = Q[rows][dp] . Kt[d][BK]: broadcast q, FMA key rows; no horizontal sums. */
static void RR_FN(rr_qk)(const float * Q, const float * Kt, float * S, int rows_pad, int d, int dp) {
    for (int r = 0; r < rows_pad; r += RR_RB) {
        for (int v0 = 0; v0 < RR_NV; v0 += RR_KVB) {
            rr_vec acc[RR_RB][RR_KVB];
            for (int a = 0; a < RR_RB; a++)
                for (int b = 0; b < RR_KVB; b++) acc[a][b] = rr_zero();
            const float * kp = Kt + v0 * RR_VL;
            for (int c = 0; c < d; c++) {
                rr_vec kk[RR_KVB];
                for (int b = 0; b < RR_KVB; b++) kk[b] = rr_load(kp + (size_t) c * RR_BK + b * RR_VL);
                for (int a = 0; a < RR_RB; a++) {
                    const rr_vec qv = rr_set1(Q[(size_t) (r + a) * dp + c]);
                    for (int b = 0; b < RR_KVB; b++) acc[a][b] = rr_fma(qv, kk[b], acc[a][b]);
                }
            }
            for (int a = 0; a < RR_RB; a++)
                for (int b = 0; b < RR_KVB; b++) rr_store(S + (size_t) (r + a) * RR_BK + (v0 + b) * RR_VL, acc[a][b]);
        }
    }
}

/* Online softmax of one tile: running max M and sum Lsum per row, O rescaled when the max
 * grows; the probabilities overwrite S (rows past `rows` and fully masked rows get zeros). */
static void RR_FN(rr_softmax_update)(float * S, float * O, float * M, float * Lsum, int rows, int rows_pad, int dp) {
    for (int r = 0; r < rows_pad; r++) {
        float * s = S + (size_t) r * RR_BK;
        if (r >= rows) {
            memset(s, 0, sizeof(float) * RR_BK);
            continue;
        }
        rr_vec vm = rr_load(s);
        for (int v = 1; v < RR_NV; v++) vm = rr_max(vm, rr_load(s + v * RR_VL));
        const float tmax = rr_hmax(vm);
        if (tmax == -INFINITY) {
            memset(s, 0, sizeof(float) * RR_BK);
            continue;
        }
        const float mnew = tmax > M[r] ? tmax : M[r];
        const rr_vec vmn = rr_set1(mnew);
        rr_vec vs = rr_zero();
        for (int v = 0; v < RR_NV; v++) {
            const rr_vec e = rr_exp2(rr_sub(rr_load(s + v * RR_VL), vmn));
            rr_store(s + v * RR_VL, e);
            vs = rr_add(vs, e);
        }
        if (mnew > M[r]) {
            const float alpha = M[r] == -INFINITY ? 0.0f : exp2f(M[r] - mnew);
            if (alpha != 1.0f) {
                const rr_vec va = rr_set1(alpha);
                float * o = O + (size_t) r * dp;
                for (int c = 0; c < dp; c += RR_VL) rr_store(o + c, rr_mul(va, rr_load(o + c)));
            }
            Lsum[r] *= alpha;
            M[r] = mnew;
        }
        Lsum[r] += rr_hsum(vs);
    }
}

/* ---- decode kernels: one block of RR_RB rows against K/V read straight from the cache
 * (f16 converted in registers), no staging copy, no transposed tile. Used for full far
 * tiles whose keys need no rotation (ReRoPE clamp), the bulk of a long-context decode. */

RR_INLINE rr_vec RR_FN(rr_kv_load)(const char * p, const int f16) {
    return f16 ? rr_load_f16((const uint16_t *) p) : rr_load((const float *) p);
}

RR_INLINE void RR_FN(rr_qk_direct)(const float * Q, const char * K, size_t ks, const char * V, size_t vs, float * S,
                                   int d, int dp, const int R, const int f16) {
    const int esz = f16 ? 2 : 4;
    for (int t = 0; t < RR_BK; t++) {
        const char * kr = K + (size_t) t * ks;
        /* strided rows of one head: prefetch every line of K a few rows ahead, and of V (used next) */
        for (int b = 0; b < d * esz; b += 64) {
            __builtin_prefetch(kr + RR_PF_ROWS * ks + b, 0, 3);
            __builtin_prefetch(V + (size_t) t * vs + b, 0, 3);
        }
        rr_vec acc[RR_RB];
        for (int a = 0; a < R; a++) acc[a] = rr_zero();
        for (int c = 0; c < d; c += RR_VL) {
            const rr_vec kv = RR_FN(rr_kv_load)(kr + (size_t) c * esz, f16);
            for (int a = 0; a < R; a++) acc[a] = rr_fma(rr_load(Q + (size_t) a * dp + c), kv, acc[a]);
        }
        for (int a = 0; a < R; a++) S[(size_t) a * RR_BK + t] = rr_hsum(acc[a]);
    }
}

RR_INLINE void RR_FN(rr_pv_direct_block)(const float * P, const char * V, size_t vs, float * O, int v0, int dp,
                                         const int R, const int CB, const int f16) {
    const int esz = f16 ? 2 : 4;
    rr_vec acc[RR_RB][RR_CB];
    for (int a = 0; a < R; a++)
        for (int b = 0; b < CB; b++) acc[a][b] = rr_load(O + (size_t) a * dp + (v0 + b) * RR_VL);
    for (int t = 0; t < RR_BK; t++) {
        const char * vr = V + (size_t) t * vs + (size_t) v0 * RR_VL * esz;
        rr_vec vv[RR_CB];
        for (int b = 0; b < CB; b++) vv[b] = RR_FN(rr_kv_load)(vr + (size_t) b * RR_VL * esz, f16);
        for (int a = 0; a < R; a++) {
            const rr_vec pv = rr_set1(P[(size_t) a * RR_BK + t]);
            for (int b = 0; b < CB; b++) acc[a][b] = rr_fma(pv, vv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < R; a++)
        for (int b = 0; b < CB; b++) rr_store(O + (size_t) a * dp + (v0 + b) * RR_VL, acc[a][b]);
}

RR_INLINE void RR_FN(rr_pv_direct_t)(const float * P, const char * V, size_t vs, float * O, int d, int dp, const int R,
                                     const int f16) {
    const int nv = d / RR_VL;
    int v0 = 0;
    for (; v0 + RR_CB <= nv; v0 += RR_CB) RR_FN(rr_pv_direct_block)(P, V, vs, O, v0, dp, R, RR_CB, f16);
    for (; v0 < nv; v0++) RR_FN(rr_pv_direct_block)(P, V, vs, O, v0, dp, R, 1, f16);
}

/* Scores and P.V of a full far-clamp tile for R <= RR_RB real rows, K/V from the cache: one
 * pair of functions per (row count, K/V type), so padded rows cost nothing. */
#define RR_DIRECT_FNS(R, F16)                                                                                   \
    static __attribute__((noinline)) void RR_FN(rr_dqk_##R##_##F16)(                                            \
        const float * Q, const char * K, size_t ks, const char * V, size_t vs, float * S, int d, int dp) {      \
        RR_FN(rr_qk_direct)(Q, K, ks, V, vs, S, d, dp, R, F16);                                                 \
    }                                                                                                           \
    static __attribute__((noinline)) void RR_FN(rr_dpv_##R##_##F16)(const float * P, const char * V, size_t vs, \
                                                                    float * O, int d, int dp) {                 \
        RR_FN(rr_pv_direct_t)(P, V, vs, O, d, dp, R, F16);                                                      \
    }
RR_DIRECT_FNS(1, 0)
RR_DIRECT_FNS(2, 0)
RR_DIRECT_FNS(3, 0)
RR_DIRECT_FNS(4, 0)
RR_DIRECT_FNS(1, 1)
RR_DIRECT_FNS(2, 1)
RR_DIRECT_FNS(3, 1)
RR_DIRECT_FNS(4, 1)
#undef RR_DIRECT_FNS
_Static_assert(RR_RB == 4, "the decode variants cover 1..4 rows");

/* One full far-clamp tile of one head block (rows <= RR_RB): scores, online softmax, P.V. */
static void RR_FN(rr_direct_tile)(const float * Q, const char * K, size_t ks, const char * V, size_t vs, float * S,
                                  float * O, float * M, float * Lsum, int d, int dp, int rows, int f16) {
#define RR_DIRECT(R)                                               \
    do {                                                           \
        if (f16) RR_FN(rr_dqk_##R##_1)(Q, K, ks, V, vs, S, d, dp); \
        else RR_FN(rr_dqk_##R##_0)(Q, K, ks, V, vs, S, d, dp);     \
        RR_FN(rr_softmax_update)(S, O, M, Lsum, R, R, dp);         \
        if (f16) RR_FN(rr_dpv_##R##_1)(S, V, vs, O, d, dp);        \
        else RR_FN(rr_dpv_##R##_0)(S, V, vs, O, d, dp);            \
    } while (0)
    switch (rows) {
        case 1: RR_DIRECT(1); break;
        case 2: RR_DIRECT(2); break;
        case 3: RR_DIRECT(3); break;
        default: RR_DIRECT(4); break;
    }
#undef RR_DIRECT
}

/* O[rows][dp] += P[rows][BK] . V[BK][dp] for value vectors [v0, v0 + CB). */
RR_INLINE void RR_FN(rr_pv_block)(const float * P, const float * V, float * O, int r, int v0, int dp, const int CB) {
    rr_vec acc[RR_RB][RR_CB];
    for (int a = 0; a < RR_RB; a++)
        for (int b = 0; b < CB; b++) acc[a][b] = rr_load(O + (size_t) (r + a) * dp + (v0 + b) * RR_VL);
    for (int t = 0; t < RR_BK; t++) {
        rr_vec vv[RR_CB];
        for (int b = 0; b < CB; b++) vv[b] = rr_load(V + (size_t) t * dp + (v0 + b) * RR_VL);
        for (int a = 0; a < RR_RB; a++) {
            const rr_vec pv = rr_set1(P[(size_t) (r + a) * RR_BK + t]);
            for (int b = 0; b < CB; b++) acc[a][b] = rr_fma(pv, vv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < RR_RB; a++)
        for (int b = 0; b < CB; b++) rr_store(O + (size_t) (r + a) * dp + (v0 + b) * RR_VL, acc[a][b]);
}

static void RR_FN(rr_pv)(const float * P, const float * V, float * O, int rows_pad, int dp) {
    const int nv = dp / RR_VL;
    for (int r = 0; r < rows_pad; r += RR_RB) {
        int v0 = 0;
        for (; v0 + RR_CB <= nv; v0 += RR_CB) RR_FN(rr_pv_block)(P, V, O, r, v0, dp, RR_CB);
        for (; v0 < nv; v0++) RR_FN(rr_pv_block)(P, V, O, r, v0, dp, 1);
    }
}

/* Scores of head block hb from the staged tile: transpose, rotate per path, QK into S (far
 * scores into S2 when a tile needs both paths). */
static void RR_FN(rr_scores_staged)(ST * st, const rerope_job * job, int hb, int use_near, int use_far, int rot_near,
                                    int rot_far) {
    const rerope_ws_layout * L = &st->L;
    const int d = job->d, dp = job->dp, rows_pad = L->rows_pad;
    const size_t blk = (size_t) hb * rows_pad * dp;
    float *kraw = st->f + L->kraw, *kn = st->f + L->kn, *kf = st->f + L->kf;
    RR_FN(rr_transpose_tile)(st, job, hb);
    const float *kt_near = kraw, *kt_far = kraw, *raw = kraw;
    if (job->k_hadamard && (rot_near || rot_far)) { /* paths that rotate keys need them unrotated first */
        RR_FN(rr_unrotate_tile)(job, kraw, kn);
        raw = kn;
    }
    if (rot_far) {
        RR_FN(rr_rotate_tile)(st, job, RR_FAR, raw, kf);
        kt_far = kf;
    }
    if (rot_near) {
        RR_FN(rr_rotate_tile)(st, job, RR_NEAR, raw, kn);
        kt_near = kn;
    }
    if (use_near) RR_FN(rr_qk)(st->f + L->qn + blk, kt_near, st->f + L->s, rows_pad, d, dp);
    if (use_far) RR_FN(rr_qk)(st->f + L->qf + blk, kt_far, st->f + (use_near ? L->s2 : L->s), rows_pad, d, dp);
}

/* ---------------------------------------------------------------- one work item */

/* Attention of query tokens [i0, i0+nt) (all query heads of KV heads h0 .. h0+nh-1) against
 * keys [k0, k1). Each key tile is read for every KV head in turn, so split-K items (all heads)
 * stream the head-interleaved cache sequentially. Leaves O (unnormalized), m, l per head block. */
static void RR_FN(rr_item)(ST * st, const rerope_job * job, int h0, int nh, int i0, int nt, int k0, int k1) {
    const rerope_ws_layout * L = &st->L;
    const int gq = job->gq, dp = job->dp, d = job->d, rows = nt * gq, rows_pad = L->rows_pad;
    const int causal = job->p.causal, sw = job->p.sliding_window;
    const int clamp = job->p.far_mode == GGML_REROPE_FAR_CLAMP;
    float *S = st->f + L->s, *S2 = st->f + L->s2;

    if (st->item_h != h0 || st->item_i0 != i0) {
        float * lam = st->f + L->tok_lambda;
        const double ln_train = job->p.logn_train_len > 1 ? log((double) job->p.logn_train_len) : 0.0;
        for (int tl = 0; tl < nt; tl++) {
            double x = job->scale * 1.4426950408889634; /* log2(e): scores in log2 units */
            if (ln_train > 0.0) {
                const double ratio = log((double) rerope_qpos(job, i0 + tl) + 1.0) / ln_train;
                if (ratio > 1.0) x *= ratio;
            }
            lam[tl] = (float) x;
        }
        st->q_ok[RR_NEAR] = st->q_ok[RR_FAR] = 0;
        st->item_h = h0;
        st->item_i0 = i0;
    }
    int32_t qmin = INT32_MAX, qmax = INT32_MIN;
    for (int tl = 0; tl < nt; tl++) {
        const int32_t pi = rerope_qpos(job, i0 + tl);
        qmin = pi < qmin ? pi : qmin;
        qmax = pi > qmax ? pi : qmax;
    }
    memset(st->f + L->o, 0, sizeof(float) * (size_t) nh * rows_pad * dp);
    for (int r = 0; r < nh * rows_pad; r++) {
        st->f[L->m + r] = -INFINITY;
        st->f[L->l + r] = 0.0f;
    }

    int32_t kp[RR_BK];
    for (int j0 = k0; j0 < k1; j0 += RR_BK) {
        const int nk = k1 - j0 < RR_BK ? k1 - j0 : RR_BK;
        int32_t kmin = INT32_MAX, kmax = INT32_MIN;
        for (int t = 0; t < nk; t++) {
            kp[t] = rerope_kpos(job, j0 + t);
            kmin = kp[t] < kmin ? kp[t] : kmin;
            kmax = kp[t] > kmax ? kp[t] : kmax;
        }
        if (causal && kmin > qmax) continue; /* every key of the tile is in the future */
        /* distance range (as int64: no overflow) -> the paths the tile needs */
        const int64_t dmax = (int64_t) qmax - kmin, dmin = (int64_t) qmin - kmax;
        if (sw > 0 && dmin >= sw && kmin >= job->p.sink_tokens) continue; /* every key dropped */
        const int drop = sw > 0 && dmax >= sw && kmax >= job->p.sink_tokens;
        int near, far;
        rerope_tile_paths(job, dmin, dmax, &near, &far);
        const int use_near = !far, use_far = !near;
        const int rot_near = use_near && job->half, rot_far = use_far && job->half && !clamp;
        const int mask = nk < RR_BK || (causal && kmax > qmin) || drop;
        if (use_near && !st->q_ok[RR_NEAR]) RR_FN(rr_prep_q)(st, job, RR_NEAR, h0, nh, i0, nt);
        if (use_far && !st->q_ok[RR_FAR]) RR_FN(rr_prep_q)(st, job, RR_FAR, h0, nh, i0, nt);
        if (rot_near) RR_FN(rr_tile_cs)(st, job, RR_NEAR, kp, nk);
        if (rot_far) RR_FN(rr_tile_cs)(st, job, RR_FAR, kp, nk);
        /* decode fast path: one row block, full far tile, keys used unrotated; K/V in place when
         * the decode kernels read their type, else from the tile's f32 rows */
        const int direct = rows_pad == RR_RB && !use_near && !rot_far && !mask && d % RR_VL == 0;
        if (!(direct && st->kv_direct)) RR_FN(rr_load_rows)(st, job, h0, nh, j0, nk);
        for (int hb = 0; hb < nh; hb++) {
            const size_t blk = (size_t) hb * rows_pad;
            float *O = st->f + L->o + blk * dp, *M = st->f + L->m + blk, *Lsum = st->f + L->l + blk;
            const char * kh = job->k + (size_t) j0 * job->k_nb_tok + (size_t) (h0 + hb) * job->k_nb_head;
            const char * vh = job->v + (size_t) j0 * job->v_nb_tok + (size_t) (h0 + hb) * job->v_nb_head;
            if (direct && st->kv_direct) {
                RR_FN(rr_direct_tile)(st->f + L->qf + blk * dp, kh, job->k_nb_tok, vh, job->v_nb_tok, S, O, M, Lsum, d,
                                      dp, rows, job->k_type == GGML_REROPE_KV_F16);
                continue;
            }
            if (direct) {
                const size_t tile = (size_t) hb * RR_BK * dp, pitch = sizeof(float) * (size_t) dp;
                RR_FN(rr_direct_tile)(st->f + L->qf + blk * dp, (const char *) (st->f + L->kr + tile), pitch,
                                      (const char *) (st->f + L->vt + tile), pitch, S, O, M, Lsum, d, dp, rows, 0);
                continue;
            }
            RR_FN(rr_scores_staged)(st, job, hb, use_near, use_far, rot_near, rot_far);

            if (mask || (use_near && use_far)) {
                for (int r = 0; r < rows; r++) {
                    const int32_t pi = rerope_qpos(job, i0 + r / gq);
                    float * s = S + (size_t) r * RR_BK;
                    const float * s2 = S2 + (size_t) r * RR_BK;
                    for (int t = 0; t < RR_BK; t++) {
                        if (t >= nk || (causal && kp[t] > pi) || (drop && rerope_is_dropped(job, pi, kp[t])))
                            s[t] = -INFINITY;
                        else if (use_near && use_far && !rerope_is_near(job, pi, kp[t])) s[t] = s2[t];
                    }
                }
            }
            RR_FN(rr_softmax_update)(S, O, M, Lsum, rows, rows_pad, dp);
            RR_FN(rr_pv)(S, st->f + L->vt + (size_t) hb * RR_BK * dp, O, rows_pad, dp);
        }
    }
}

/* ---------------------------------------------------------------- entry */

void RR_CAT(rerope_kernel, RR_ISA)(const rerope_job * job, int ith, int nth, void * ws) {
    ST st;
    RR_FN(rr_setup)(&st, job, ws);
    const int gq = job->gq, dp = job->dp, d = job->d;
    const float *O = st.f + st.L.o, *Lsum = st.f + st.L.l, *M = st.f + st.L.m;
    const int rp = st.L.rows_pad;

    if (job->n_split > 0) {
        /* split-K: items are key chunks holding every KV head (each chunk's cache rows read in
         * order), dealt round-robin so a sliding window's few visible chunks spread over the threads;
         * every item has the same queries, so each thread prepares them once */
        const int n_rows = job->n_q * job->n_head;
        for (int s = ith; s < job->n_split; s += nth) {
            const int k0 = s * job->split_keys;
            const int k1 = k0 + job->split_keys < job->n_kv ? k0 + job->split_keys : job->n_kv;
            RR_FN(rr_item)(&st, job, 0, job->n_head_kv, 0, job->n_q, k0, k1);
            for (int h = 0; h < job->n_head_kv; h++) {
                for (int r = 0; r < job->n_q * gq; r++) {
                    const int i = r / gq, head = h * gq + r % gq;
                    const size_t rr = (size_t) h * rp + r;
                    float * part = job->partials + ((size_t) s * n_rows + (size_t) i * job->n_head + head) * (2 + dp);
                    part[0] = M[rr];
                    part[1] = Lsum[rr];
                    memcpy(part + 2, O + rr * dp, sizeof(float) * d);
                }
            }
        }
        return;
    }
    const int n_items = job->n_qtiles * job->n_head_kv;
    for (int it = ith; it < n_items; it += nth) {
        const int qt = it / job->n_head_kv, h = it % job->n_head_kv;
        const int i0 = qt * job->tq, nt = job->n_q - i0 < job->tq ? job->n_q - i0 : job->tq;
        RR_FN(rr_item)(&st, job, h, 1, i0, nt, 0, job->n_kv);
        for (int r = 0; r < nt * gq; r++) {
            const int i = i0 + r / gq, head = h * gq + r % gq;
            float * o = (float *) (job->out + (size_t) i * job->o_nb_tok + (size_t) head * job->o_nb_head);
            if (Lsum[r] > 0.0f) {
                const float inv = 1.0f / Lsum[r];
                for (int c = 0; c < d; c++) o[c] = O[(size_t) r * dp + c] * inv;
            } else {
                memset(o, 0, sizeof(float) * d);
            }
        }
    }
}

#undef ST
