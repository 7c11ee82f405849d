/* The tiled ReRoPE attention kernel, written once. Each kernel_<isa>.c defines the
 * vector primitives below and includes this file:
 *
 *   RR_ISA            suffix of the exported function (rerope_kernel_<RR_ISA>)
 *   RR_VL             floats per vector; rr_vec the vector type
 *   RR_RB, RR_KVB     register blocking: query rows x key vectors (QK), RR_CB value vectors (PV)
 *   rr_zero() rr_load(p) rr_store(p, v) rr_set1(x) rr_fma(a, b, c) = a*b + c
 *   rr_mul rr_add rr_sub rr_max rr_hmax(v) rr_hsum(v) rr_exp2(v)
 *   rr_f16_row(float * dst, const uint16_t * src, int n)   f16 -> f32
 *   optional RR_HAVE_TRANSPOSE8: rr_transpose8(src, src_stride, dst, dst_stride)
 *
 * Work item: (KV head, tile of query tokens) in prefill - all query heads of the KV
 * group are rows of one item so each K/V tile is converted once for them - or
 * (KV head, key chunk) in split-K decode. Per key tile (RR_BK keys) the distance range
 * picks NEAR (<R_i q, R_j k>), FAR (<R_far(i) q, R_farkey(j) k>; CLAMP: key unrotated)
 * or MIXED (both, chosen per element). Scores are in log2 units (q pre-scaled by
 * scale * lambda_i * log2(e)) so the online softmax uses exp2.
 */
#include "kernel.h"

#include <math.h>
#include <string.h>

#define RR_CAT2(a, b) a##_##b
#define RR_CAT(a, b) RR_CAT2(a, b)
#define RR_FN(name) RR_CAT(name, RR_ISA)
#define RR_NV (RR_BK / RR_VL) /* vectors per key tile row */
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
} RR_FN(rr_state);

#define ST RR_FN(rr_state)

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

    const float kinv = job->p.far_mode == GGML_REROPE_FAR_LEAKY ? 1.0f / job->p.leaky_k : 1.0f;
    float * stn_c = st->f + st->L.stn_c, * stn_s = st->f + st->L.stn_s;
    float * stl_c = st->f + st->L.stl_c, * stl_s = st->f + st->L.stl_s;
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
    memset(st->f + st->L.kr, 0, sizeof(float) * RR_BK * (size_t) job->dp);
    memset(st->f + st->L.vt, 0, sizeof(float) * RR_BK * (size_t) job->dp);
}

/* ---------------------------------------------------------------- angles */

/* Angle position of the far-path query rotation for a query at position i. */
static inline double RR_FN(rr_far_q_angle)(const rerope_job * job, int32_t i) {
    const ggml_rerope_params * p = &job->p;
    switch (p->far_mode) {
        case GGML_REROPE_FAR_LEAKY:
            return (double) i / p->leaky_k + p->window - (double) p->window / p->leaky_k;
        case GGML_REROPE_FAR_GROUP:
            return (double) (i / p->group_size) + p->window - (double) (p->window / p->group_size);
        default: return (double) p->window;
    }
}

/* Angle position of the far-path key rotation (LEAKY, GROUP). */
static inline double RR_FN(rr_far_k_angle)(const rerope_job * job, int32_t j) {
    if (job->p.far_mode == GGML_REROPE_FAR_LEAKY) return (double) j / job->p.leaky_k;
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

/* Rotated, pre-scaled queries of the current item for one path. */
static void RR_FN(rr_prep_q)(ST * st, const rerope_job * job, int path, int h, int i0, int nt) {
    float * Q = st->f + (path == RR_NEAR ? st->L.qn : st->L.qf);
    const float * lam = st->f + st->L.tok_lambda;
    const int dp = job->dp, gq = job->gq;
    for (int tl = 0; tl < nt; tl++) {
        const int32_t pi = rerope_qpos(job, i0 + tl);
        const double A = path == RR_NEAR ? (double) pi : RR_FN(rr_far_q_angle)(job, pi);
        RR_FN(rr_row_angle)(st, job, path, A);
        for (int g = 0; g < gq; g++) {
            const float * src = (const float *) (job->q + (size_t) (i0 + tl) * job->q_nb_tok +
                                                 (size_t) (h * gq + g) * job->q_nb_head);
            RR_FN(rr_rotate_row)(job, Q + (size_t) (tl * gq + g) * dp, src, st->rc[path], st->rs[path], lam[tl]);
        }
    }
    for (int r = nt * gq; r < st->L.rows_pad; r++) memset(Q + (size_t) r * dp, 0, sizeof(float) * dp);
    st->q_ok[path] = 1;
}

/* cos/sin of the current key tile for a path into csc/css [half][RR_BK]. */
static void RR_FN(rr_tile_cs)(ST * st, const rerope_job * job, int path, const int32_t * kp, int nk) {
    float * csc = st->f + st->L.csc, * css = st->f + st->L.css;
    const int half = job->half;
    const int group = path == RR_FAR && job->p.far_mode == GGML_REROPE_FAR_GROUP;
    int contiguous = 1;
    for (int t = 1; t < nk; t++) contiguous &= kp[t] == kp[0] + t;
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
        if (st->anc_ok[path] && !group && p0 == st->anc_p0[path] + RR_BK) {
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
        const float * sc = st->f + st->L.stn_c, * ss = st->f + st->L.stn_s;
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

/* Converts keys [j0, j0+nk) of KV head h to f32 and transposes them into kraw [d][RR_BK];
 * values into vt [RR_BK][dp]. Rows past nk are zero. */
static void RR_FN(rr_load_tile)(ST * st, const rerope_job * job, int h, int j0, int nk) {
    float * kr = st->f + st->L.kr, * kraw = st->f + st->L.kraw, * vt = st->f + st->L.vt;
    const int d = job->d, dp = job->dp;
    for (int t = 0; t < nk; t++) {
        const char * ks = job->k + (size_t) (j0 + t) * job->k_nb_tok + (size_t) h * job->k_nb_head;
        const char * vs = job->v + (size_t) (j0 + t) * job->v_nb_tok + (size_t) h * job->v_nb_head;
        if (job->kv_f16) {
            rr_f16_row(kr + (size_t) t * dp, (const uint16_t *) ks, d);
            rr_f16_row(vt + (size_t) t * dp, (const uint16_t *) vs, d);
        } else {
            memcpy(kr + (size_t) t * dp, ks, sizeof(float) * d);
            memcpy(vt + (size_t) t * dp, vs, sizeof(float) * d);
        }
    }
    if (nk < RR_BK) {
        memset(kr + (size_t) nk * dp, 0, sizeof(float) * (size_t) (RR_BK - nk) * dp);
        memset(vt + (size_t) nk * dp, 0, sizeof(float) * (size_t) (RR_BK - nk) * dp);
    }
#ifdef RR_HAVE_TRANSPOSE8
    for (int c0 = 0; c0 < d; c0 += 8)
        for (int t0 = 0; t0 < RR_BK; t0 += 8)
            rr_transpose8(kr + (size_t) t0 * dp + c0, dp, kraw + (size_t) c0 * RR_BK + t0, RR_BK);
#else
    for (int t = 0; t < RR_BK; t++)
        for (int c = 0; c < d; c++) kraw[(size_t) c * RR_BK + t] = kr[(size_t) t * dp + c];
#endif
}

/* dst[d][BK] = kraw rotated by the tile's cos/sin (pairs of the rope mode). */
static void RR_FN(rr_rotate_tile)(const ST * st, const rerope_job * job, float * dst) {
    const float * src = st->f + st->L.kraw, * csc = st->f + st->L.csc, * css = st->f + st->L.css;
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
    if (job->d > job->n_rot)
        memcpy(dst + (size_t) job->n_rot * RR_BK, src + (size_t) job->n_rot * RR_BK,
               sizeof(float) * RR_BK * (size_t) (job->d - job->n_rot));
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

/* ---------------------------------------------------------------- one work item */

/* Attention of query tokens [i0, i0+nt) (all heads of KV group h) against keys [k0, k1).
 * Leaves O (unnormalized), m, l of the rows in the workspace. */
static void RR_FN(rr_item)(ST * st, const rerope_job * job, int h, int i0, int nt, int k0, int k1) {
    const rerope_ws_layout * L = &st->L;
    const int gq = job->gq, dp = job->dp, d = job->d, rows = nt * gq, rows_pad = L->rows_pad;
    const int w = job->p.window, causal = job->p.causal;
    const int clamp = job->p.far_mode == GGML_REROPE_FAR_CLAMP;
    float *O = st->f + L->o, *S = st->f + L->s, *S2 = st->f + L->s2, *M = st->f + L->m, *Lsum = st->f + L->l;
    float *kraw = st->f + L->kraw, *kn = st->f + L->kn, *kf = st->f + L->kf, *vt = st->f + L->vt;

    if (st->item_h != h || st->item_i0 != i0) {
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
        st->item_h = h;
        st->item_i0 = i0;
    }
    int32_t qmin = INT32_MAX, qmax = INT32_MIN;
    for (int tl = 0; tl < nt; tl++) {
        const int32_t pi = rerope_qpos(job, i0 + tl);
        qmin = pi < qmin ? pi : qmin;
        qmax = pi > qmax ? pi : qmax;
    }
    memset(O, 0, sizeof(float) * (size_t) rows_pad * dp);
    for (int r = 0; r < rows_pad; r++) {
        M[r] = -INFINITY;
        Lsum[r] = 0.0f;
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
        /* distance range: NEAR if all i - j < w, FAR if all >= w (as int64: no overflow) */
        const int64_t dmax = (int64_t) qmax - kmin, dmin = (int64_t) qmin - kmax;
        const int near = dmax < w, far = dmin >= w;
        const int use_near = !far, use_far = !near;
        const int mask = nk < RR_BK || (causal && kmax > qmin);

        RR_FN(rr_load_tile)(st, job, h, j0, nk);
        const float *kt_near = kraw, *kt_far = kraw;
        if (use_near) {
            if (!st->q_ok[RR_NEAR]) RR_FN(rr_prep_q)(st, job, RR_NEAR, h, i0, nt);
            if (job->half) {
                RR_FN(rr_tile_cs)(st, job, RR_NEAR, kp, nk);
                RR_FN(rr_rotate_tile)(st, job, kn);
                kt_near = kn;
            }
        }
        if (use_far) {
            if (!st->q_ok[RR_FAR]) RR_FN(rr_prep_q)(st, job, RR_FAR, h, i0, nt);
            if (job->half && !clamp) {
                RR_FN(rr_tile_cs)(st, job, RR_FAR, kp, nk);
                RR_FN(rr_rotate_tile)(st, job, kf);
                kt_far = kf;
            }
        }
        if (use_near) RR_FN(rr_qk)(st->f + L->qn, kt_near, S, rows_pad, d, dp);
        if (use_far) RR_FN(rr_qk)(st->f + L->qf, kt_far, use_near ? S2 : S, rows_pad, d, dp);

        if (mask || (use_near && use_far)) {
            for (int r = 0; r < rows; r++) {
                const int32_t pi = rerope_qpos(job, i0 + r / gq);
                float * s = S + (size_t) r * RR_BK;
                const float * s2 = S2 + (size_t) r * RR_BK;
                for (int t = 0; t < RR_BK; t++) {
                    if (t >= nk || (causal && kp[t] > pi)) s[t] = -INFINITY;
                    else if (use_near && use_far && (int64_t) pi - kp[t] >= w) s[t] = s2[t];
                }
            }
        }
        /* online softmax: P overwrites S */
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
        RR_FN(rr_pv)(S, vt, O, rows_pad, dp);
    }
}

/* ---------------------------------------------------------------- entry */

void RR_CAT(rerope_kernel, RR_ISA)(const rerope_job * job, int ith, int nth, void * ws) {
    ST st;
    RR_FN(rr_setup)(&st, job, ws);
    const int gq = job->gq, dp = job->dp, d = job->d;
    const float * O = st.f + st.L.o, * Lsum = st.f + st.L.l, * M = st.f + st.L.m;

    if (job->n_split > 0) {
        /* split-K: items (KV head, key chunk), KV-head-major, contiguous per thread so the
         * rotated queries of a head are prepared once per thread */
        const int n_items = job->n_head_kv * job->n_split, n_rows = job->n_q * job->n_head;
        const int it0 = (int) ((long) n_items * ith / nth), it1 = (int) ((long) n_items * (ith + 1) / nth);
        for (int it = it0; it < it1; it++) {
            const int h = it / job->n_split, s = it % job->n_split;
            const int k0 = s * job->split_keys;
            const int k1 = k0 + job->split_keys < job->n_kv ? k0 + job->split_keys : job->n_kv;
            RR_FN(rr_item)(&st, job, h, 0, job->n_q, k0, k1);
            for (int r = 0; r < job->n_q * gq; r++) {
                const int i = r / gq, head = h * gq + r % gq;
                float * part = job->partials + ((size_t) s * n_rows + (size_t) i * job->n_head + head) * (2 + dp);
                part[0] = M[r];
                part[1] = Lsum[r];
                memcpy(part + 2, O + (size_t) r * dp, sizeof(float) * d);
            }
        }
        return;
    }
    const int n_items = job->n_qtiles * job->n_head_kv;
    for (int it = ith; it < n_items; it += nth) {
        const int qt = it / job->n_head_kv, h = it % job->n_head_kv;
        const int i0 = qt * job->tq, nt = job->n_q - i0 < job->tq ? job->n_q - i0 : job->tq;
        RR_FN(rr_item)(&st, job, h, i0, nt, 0, job->n_kv);
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
