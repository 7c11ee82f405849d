/* Internal interface of the CPU attention kernel: the job one call describes,
 * the per-thread workspace, and the per-ISA kernel entry points (dispatch.c picks one). */
#ifndef GGML_REROPE_KERNEL_H
#define GGML_REROPE_KERNEL_H

#include "ggml_rerope.h"

#include <stddef.h>
#include <stdint.h>

/* Key tile: keys per tile (a multiple of every vector width, 16 for AVX-512). */
#define RR_BK 64
/* Query rows (tokens x heads of one KV group) a prefill work item aims for. */
#define RR_ROWS_TARGET 256
/* Split-K (decode) is used when every KV group's queries fit one tile of at most
 * this many tokens; the keys are then cut into chunks of RR_SPLIT_KEYS keys. */
#define RR_SPLIT_MAX_Q 4
#define RR_SPLIT_KEYS 512
#define RR_SPLIT_MAX 64

/* One validated attention call. Strides are in bytes so ggml views work. */
typedef struct rerope_job {
    ggml_rerope_params p; /* copy; p.freq_factors still points at the caller's array */
    int d, dp;            /* head size, and d rounded up to 16 (row pitch of buffers) */
    int n_rot, half;      /* rotary dims and n_rot / 2 */
    float scale;          /* resolved score scale */

    const char * q;
    size_t q_nb_head, q_nb_tok;
    const char * k;
    size_t k_nb_head, k_nb_tok;
    const char * v;
    size_t v_nb_head, v_nb_tok;
    int k_type, v_type; /* ggml_rerope_kv_type of the K and V rows */
    int k_hadamard;     /* 0, or the Hadamard block of the stored keys (ggml_rerope.h) */
    int n_q, n_head, n_kv, n_head_kv, gq; /* gq = n_head / n_head_kv */
    const int32_t * q_pos;                /* NULL: n_kv - n_q + i */
    const int32_t * k_pos;                /* NULL: j */

    char * out; /* final output (prefill and merge) */
    size_t o_nb_head, o_nb_tok;

    int tq;       /* query tokens per work item */
    int n_qtiles; /* ceil(n_q / tq) */
    int n_split;  /* 0: prefill; else split-K chunks, partials below */
    int split_keys;
    float * partials; /* [n_split][n_q][n_head][2 + dp]: m (log2 units), l, acc */

    double theta[128]; /* theta_m, m < half */
} rerope_job;

/* Fills the derived fields (d, dp, scale, theta, tiling, split-K choice) of a job whose
 * pointers, strides and dims are set. `allow_split` 0 forces the prefill path. */
void rerope_job_finish(rerope_job * job, int allow_split);

/* Bytes of workspace one thread needs (64-byte aligned base expected). */
size_t rerope_workspace_bytes(const rerope_job * job);

/* Runs thread ith's share (of nth) of the job: prefill items, or split-K partials
 * when job->n_split > 0. `ws` is rerope_workspace_bytes(job) of 64-byte aligned memory. */
typedef void (*rerope_kernel_fn)(const rerope_job * job, int ith, int nth, void * ws);

void rerope_kernel_scalar(const rerope_job * job, int ith, int nth, void * ws);
#if defined(__x86_64__) || defined(_M_X64)
void rerope_kernel_avx2(const rerope_job * job, int ith, int nth, void * ws);
void rerope_kernel_avx512(const rerope_job * job, int ith, int nth, void * ws);
#endif
#if defined(__aarch64__)
void rerope_kernel_neon(const rerope_job * job, int ith, int nth, void * ws);
#endif

/* Floats of the split-K partials buffer (0 when n_split == 0). */
size_t rerope_partials_floats(const rerope_job * job);

/* Split-K merge of thread ith's share of the rows into job->out. */
void rerope_merge_partials(const rerope_job * job, int ith, int nth);

/* x[0 .. n) = H_b of each block of b elements (ggml_rerope.h's Walsh-Hadamard, its own inverse). */
void rerope_hadamard_row(float * x, int n, int b);

/* 1 if the pair (query at i, key at j) is on the near path (rel = i - j): the contract's rule. */
static inline int rerope_is_near(const rerope_job * jb, int32_t i, int32_t j) {
    const int64_t dist = (int64_t) i - j, w = jb->p.window;
    if (jb->p.far_mode != GGML_REROPE_FAR_CHUNK) return dist < w;
    const int32_t s = jb->p.chunk_len;
    if (dist <= w - s) return 1;
    const int32_t ci = i / s, cj = j / s;
    return cj == ci || (cj == ci - 1 && i % s + (int64_t) s <= w);
}

/* Paths a tile needs from its distance range dmin..dmax (i - j): near for every pair, far for
 * every pair, or both. Conservative: a "both" tile picks per pair with rerope_is_near. */
static inline void rerope_tile_paths(const rerope_job * jb, int64_t dmin, int64_t dmax, int * near_all, int * far_all) {
    const int64_t w = jb->p.window;
    if (jb->p.far_mode == GGML_REROPE_FAR_CHUNK) {
        *near_all = dmax <= w - jb->p.chunk_len;
        *far_all = dmin > w;
    } else {
        *near_all = dmax < w;
        *far_all = dmin >= w;
    }
}

/* 1 if key j is dropped for a query at i (sliding window, the sinks kept). */
static inline int rerope_is_dropped(const rerope_job * jb, int32_t i, int32_t j) {
    return jb->p.sliding_window > 0 && (int64_t) i - j >= jb->p.sliding_window && j >= jb->p.sink_tokens;
}

/* 1 if a path's scores use the stored keys as they are (no rotation by key position): then, with
 * Hadamard-rotated keys, that path's queries are rotated instead (<q, k> = <H q, H k>). */
static inline int rerope_path_keeps_keys(const rerope_job * j, int far) {
    return j->half == 0 || (far && j->p.far_mode == GGML_REROPE_FAR_CLAMP);
}

/* The kernel the current SIMD setting selects. */
rerope_kernel_fn rerope_select_kernel(void);

/* Workspace layout (float offsets from a 64-byte aligned base; every block 64-byte aligned). */
typedef struct rerope_ws_layout {
    int rows_pad;                    /* tq * gq rounded up to 4: rows of one KV head's block */
    int n_hb;                        /* KV heads an item holds at once (split-K: all) */
    size_t qn, qf, o, m, l;          /* per-row buffers, n_hb blocks of rows_pad rows */
    size_t s, s2;                    /* scores of one block */
    size_t tok_lambda;               /* per query token: lambda * scale * log2(e) */
    size_t kr, kraw, kn, kf, vt;     /* key/value tile buffers (kr, vt: n_hb of them) */
    size_t csc, css, csc2, css2;     /* cos/sin of the current tile (near, far), [half][BK] */
    size_t stn_c, stn_s, stl_c, stl_s; /* step tables t*theta and (t/k)*theta, [half][BK] */
    size_t anchor;                   /* doubles: see kernel_body.h */
    size_t total;                    /* floats */
} rerope_ws_layout;

static inline size_t rerope_round16(size_t x) { return (x + 15) & ~(size_t) 15; }

static inline rerope_ws_layout rerope_layout(const rerope_job * j) {
    rerope_ws_layout L;
    size_t at = 0;
    L.rows_pad = (j->tq * j->gq + 3) & ~3;
    L.n_hb = j->n_split ? j->n_head_kv : 1;
    size_t rp = (size_t) L.rows_pad, rh = rp * (size_t) L.n_hb, dp = (size_t) j->dp, bk = RR_BK,
           hf = (size_t) (j->half ? j->half : 1);
#define RR_TAKE(field, n) (L.field = at, at += rerope_round16(n))
    RR_TAKE(qn, rh * dp);
    RR_TAKE(qf, rh * dp);
    RR_TAKE(o, rh * dp);
    RR_TAKE(m, rh);
    RR_TAKE(l, rh);
    RR_TAKE(s, rp * bk);
    RR_TAKE(s2, rp * bk);
    RR_TAKE(tok_lambda, (size_t) j->tq);
    RR_TAKE(kr, bk * dp * (size_t) L.n_hb);
    RR_TAKE(kraw, dp * bk);
    RR_TAKE(kn, dp * bk);
    RR_TAKE(kf, dp * bk);
    RR_TAKE(vt, bk * dp * (size_t) L.n_hb);
    RR_TAKE(csc, hf * bk);
    RR_TAKE(css, hf * bk);
    RR_TAKE(csc2, hf * bk);
    RR_TAKE(css2, hf * bk);
    RR_TAKE(stn_c, hf * bk);
    RR_TAKE(stn_s, hf * bk);
    RR_TAKE(stl_c, hf * bk);
    RR_TAKE(stl_s, hf * bk);
    RR_TAKE(anchor, 2 * 16 * hf); /* 16 double arrays of half */
#undef RR_TAKE
    L.total = at;
    return L;
}

/* Position helpers of the kernels (NULL positions are the defaults of ggml_rerope_attn_call). */
static inline int32_t rerope_qpos(const rerope_job * j, int i) {
    return j->q_pos ? j->q_pos[i] : (int32_t) (j->n_kv - j->n_q + i);
}
static inline int32_t rerope_kpos(const rerope_job * j, int t) { return j->k_pos ? j->k_pos[t] : (int32_t) t; }

#endif
