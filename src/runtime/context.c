/* Context: KV cache + backends + compute allocator; micro-batched eval, truncate, scheme.
 * CPU: one graph per micro-batch with the attention as a custom node, on ggml's CPU threads.
 * Any layer on a GPU (and GGML_REROPE_RUNTIME_ATTN=outside / outside-split on the CPU, to check that
 * path): the graph runs in pieces, each on its layer's device, with our kernel between them
 * (attn_outside.c). */
#define _DEFAULT_SOURCE
#include "rt_batch.h"
#include "rt_embed.h"
#include "rt_errors.h"
#include "rt_exec.h"
#include "rt_graph.h"
#include "rt_kv.h"
#include "rt_place.h"

#include "ggml-alloc.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One sequence: its length and its position scheme. Its cache rows start at seq * n_ctx_seq. */
typedef struct rt_seq {
    int32_t n_past;
    ggml_rerope_scheme scheme;
    float * freq_factors; /* owned copy of scheme.freq_factors */
} rt_seq;

struct ggml_rerope_context {
    ggml_rerope_model * model;
    ggml_rerope_context_params cparams;
    rt_kv_cache kv;
    int32_t n_seq, n_ctx_seq;
    rt_seq * seq;              /* [n_seq] */
    ggml_rerope_params * attn; /* [n_seq]: each sequence's attention parameters, alive while graphs compute */
    rt_attn_mode attn_mode;
    int32_t max_span;          /* sequences one graph may mix (1 on the ggml debug path) */

    ggml_backend_t backend;      /* CPU */
    struct ggml_threadpool * threadpool;
    ggml_gallocr_t galloc;       /* the graph's buffers: one per device of the placement */
    rt_pieces pieces;            /* RT_ATTN_OUTSIDE: the graph in pieces, attention between them */
    int * slot_mem;              /* RT_ATTN_OUTSIDE: each node's device, per build */
    rt_graph_inputs inputs;      /* RT_ATTN_OUTSIDE: each device's inputs */
    rt_host_embed embed;         /* RT_ATTN_OUTSIDE: the token embedding looked up on the host */

    void * graph_mem; /* tensor + graph metadata, reused by every build */
    size_t graph_mem_size;
    rt_ubatch ub;     /* the micro-batch being planned */
    int32_t * iota;   /* 0 .. n_ctx_seq-1: key positions */
    int32_t * n_past_before; /* [n_seq] a decode call's starting lengths, restored on failure */
    int32_t * out_idx;  /* a batch's logit row of each token (-1: none), grown as needed */
    size_t out_idx_cap;
    float * logits_tmp; /* logit rows of one graph when they go to the caller out of order */
    ggml_fp16_t * mask; /* ggml path only: causal mask, grown as needed */
    size_t mask_cap;
};

ggml_rerope_context_params ggml_rerope_context_default_params(void) {
    ggml_rerope_context_params p = {.n_ctx = 4096,
                                    .n_batch = 512,
                                    .n_threads = 0,
                                    .type_k = GGML_REROPE_KV_F16,
                                    .type_v = GGML_REROPE_KV_F16,
                                    .n_seq_max = 1};
    return p;
}

/* Scheme -> the operator's per-layer parameters (validated by the operator's own check). */
static ggml_rerope_status scheme_to_params(const ggml_rerope_model * m, const ggml_rerope_scheme * s,
                                           const float * freq_factors, ggml_rerope_params * p) {
    const ggml_rerope_model_info * I = &m->info;
    if (!(s->rope_base >= 0.0f) || !isfinite(s->rope_base))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "scheme.rope_base must be >= 0 (0 = the model's), got %g",
                           (double) s->rope_base);
    if (!(s->attn_factor >= 0.0f) || !isfinite(s->attn_factor))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "scheme.attn_factor must be >= 0 (0 = 1), got %g",
                           (double) s->attn_factor);
    *p = ggml_rerope_default_params(I->head_dim);
    p->n_rot = I->n_rot;
    p->rope_mode = I->rope_mode;
    p->rope_base = s->rope_base > 0.0f ? s->rope_base : I->rope_base;
    p->freq_factors = freq_factors ? freq_factors : m->freq_factors;
    p->window = s->window;
    p->far_mode = s->far_mode;
    p->leaky_k = s->leaky_k;
    p->group_size = s->group_size;
    p->chunk_len = s->chunk_len;
    p->sliding_window = s->sliding_window;
    p->sink_tokens = s->sink_tokens;
    p->logn_train_len = s->logn_train_len;
    p->scale = (s->attn_factor > 0.0f ? s->attn_factor : 1.0f) / sqrtf((float) I->head_dim);
    p->causal = 1;
    return ggml_rerope_check_params(p);
}

static ggml_rerope_status seq_in_range(const ggml_rerope_context * ctx, int32_t seq) {
    if (!ctx) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx is NULL");
    if (seq < 0 || seq >= ctx->n_seq)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "seq must be in 0..%d (n_seq_max = %d), got %d", ctx->n_seq - 1,
                           ctx->n_seq, seq);
    return GGML_REROPE_OK;
}

/* Sets the scheme of sequences first..last; checked once, so on failure none of them changes. */
static ggml_rerope_status set_scheme_range(ggml_rerope_context * ctx, int32_t first, int32_t last,
                                           const ggml_rerope_scheme * scheme) {
    if (!scheme) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "scheme must not be NULL");
    const size_t n = (size_t) (ctx->model->info.n_rot / 2);
    ggml_rerope_params p;
    ggml_rerope_status s = scheme_to_params(ctx->model, scheme, scheme->freq_factors, &p);
    if (s) return s; /* the old schemes stay */
    float ** ff = calloc((size_t) (last - first + 1), sizeof(float *));
    if (!ff) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the schemes");
    for (int32_t i = first; i <= last && scheme->freq_factors; i++) {
        float * f = ff[i - first] = malloc(sizeof(float) * (n > 0 ? n : 1));
        if (!f) {
            for (int32_t j = first; j < i; j++) free(ff[j - first]);
            free(ff);
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory copying freq_factors");
        }
        memcpy(f, scheme->freq_factors, sizeof(float) * n);
    }
    for (int32_t i = first; i <= last; i++) {
        rt_seq * q = &ctx->seq[i];
        free(q->freq_factors);
        q->freq_factors = ff[i - first];
        q->scheme = *scheme;
        q->scheme.freq_factors = q->freq_factors;
        ctx->attn[i] = p;
        ctx->attn[i].freq_factors = q->freq_factors ? q->freq_factors : ctx->model->freq_factors;
    }
    free(ff);
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_context_set_scheme(ggml_rerope_context * ctx, const ggml_rerope_scheme * scheme) {
    rerope_clear_error();
    if (!ctx || !scheme) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx and scheme must not be NULL");
    return set_scheme_range(ctx, 0, ctx->n_seq - 1, scheme);
}

ggml_rerope_status ggml_rerope_seq_set_scheme(ggml_rerope_context * ctx, int32_t seq,
                                              const ggml_rerope_scheme * scheme) {
    rerope_clear_error();
    ggml_rerope_status s = seq_in_range(ctx, seq);
    return s ? s : set_scheme_range(ctx, seq, seq, scheme);
}

void ggml_rerope_context_free(ggml_rerope_context * ctx) {
    if (!ctx) return;
    if (ctx->galloc) ggml_gallocr_free(ctx->galloc);
    rt_pieces_free(&ctx->pieces);
    rt_embed_free(&ctx->embed);
    rt_graph_inputs_free(&ctx->inputs);
    if (ctx->backend) ggml_backend_free(ctx->backend);
    if (ctx->threadpool) ggml_threadpool_free(ctx->threadpool);
    rt_kv_free(&ctx->kv);
    rt_ubatch_free(&ctx->ub);
    for (int32_t i = 0; ctx->seq && i < ctx->n_seq; i++) free(ctx->seq[i].freq_factors);
    free(ctx->seq);
    free(ctx->attn);
    free(ctx->graph_mem);
    free(ctx->slot_mem);
    free(ctx->iota);
    free(ctx->n_past_before);
    free(ctx->out_idx);
    free(ctx->logits_tmp);
    free(ctx->mask);
    free(ctx);
}

static rt_graph_plan graph_plan(const ggml_rerope_context * ctx) {
    const rt_graph_plan plan = {.model = ctx->model,
                                .kv = &ctx->kv,
                                .attn = ctx->attn,
                                .mode = ctx->attn_mode,
                                .mem = ctx->graph_mem,
                                .mem_size = ctx->graph_mem_size,
                                .slot_mem = ctx->slot_mem,
                                .inputs = ctx->attn_mode == RT_ATTN_OUTSIDE ? &ctx->inputs : NULL,
                                .max_span = ctx->max_span};
    return plan;
}

/* Reserves the compute buffers for a graph of n_span sequences, n_new tokens each, at a full cache; on
 * the pieces path first checks that each device runs its nodes (an error now, not a crash later). */
static ggml_rerope_status reserve_for(ggml_rerope_context * ctx, int32_t n_span, int32_t n_new) {
    rt_kv_span span[GGML_REROPE_MAX_SEQ];
    for (int32_t k = 0; k < n_span; k++)
        span[k] = (rt_kv_span){.seq = k,
                               .kv_base = k * ctx->n_ctx_seq,
                               .n_past = ctx->n_ctx_seq - n_new,
                               .n_new = n_new,
                               .tok0 = k * n_new};
    const rt_batch_shape worst = {.n_tokens = n_span * n_new, .n_out = n_span * n_new, .n_span = n_span, .span = span};
    const rt_graph_plan plan = graph_plan(ctx);
    rt_graph g;
    ggml_rerope_status s = rt_graph_build(&plan, &worst, &g);
    if (s) return s;
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) s = rt_pieces_reserve(&ctx->pieces, ctx->galloc, &g);
    else if (!ggml_gallocr_reserve(ctx->galloc, g.gf)) s = rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory");
    ggml_free(g.ctx);
    if (s)
        return rerope_fail_in(GGML_REROPE_ERR_NO_MEMORY, "the compute buffer for %d tokens of %d sequence(s)",
                              n_span * n_new, n_span);
    return GGML_REROPE_OK;
}

static ggml_rerope_status setup_compute(ggml_rerope_context * ctx) {
    const int n_threads = ctx->cparams.n_threads;
    ctx->backend = ggml_backend_cpu_init();
    if (!ctx->backend) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot start ggml's CPU backend");
    ggml_backend_cpu_set_n_threads(ctx->backend, n_threads);
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    ctx->threadpool = ggml_threadpool_new(&tpp);
    if (!ctx->threadpool)
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create a pool of %d threads", n_threads);
    ggml_backend_cpu_set_threadpool(ctx->backend, ctx->threadpool);

    ctx->graph_mem_size = rt_graph_mem_size(ctx->model, ctx->max_span);
    ctx->graph_mem = malloc(ctx->graph_mem_size);
    ctx->iota = malloc(sizeof(int32_t) * (size_t) ctx->n_ctx_seq);
    ctx->logits_tmp = malloc(sizeof(float) * (size_t) ctx->cparams.n_batch * (size_t) ctx->model->info.n_vocab);
    if (!ctx->graph_mem || !ctx->iota || !ctx->logits_tmp)
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
    for (int32_t i = 0; i < ctx->n_ctx_seq; i++) ctx->iota[i] = i;

    if (ctx->attn_mode == RT_ATTN_OUTSIDE) {
        const size_t max_nodes = rt_graph_max_nodes(ctx->model, ctx->max_span);
        ctx->slot_mem = malloc(sizeof(int) * (max_nodes + (size_t) ctx->model->info.n_layer));
        if (!ctx->slot_mem) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
        ggml_rerope_status s = rt_pieces_init(&ctx->pieces, ctx->model, ctx->backend, n_threads, max_nodes);
        if (!s) s = rt_embed_init(&ctx->embed, ctx->model->tok_embd, ctx->backend);
        if (!s) s = rt_graph_inputs_init(&ctx->inputs, ctx->model, ctx->cparams.n_batch);
        if (s) return s;
        ctx->galloc = rt_pieces_gallocr(&ctx->pieces);
    } else {
        ctx->galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(ctx->backend));
    }
    if (!ctx->galloc) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the compute allocator");
    /* Reserve for the largest graphs: n_batch tokens of one sequence at a full cache, and as many
     * sequences as one graph mixes, each at a full cache (their attention scratch adds up). */
    const int32_t nb = ctx->cparams.n_batch;
    ggml_rerope_status s = reserve_for(ctx, 1, nb < ctx->n_ctx_seq ? nb : ctx->n_ctx_seq);
    if (!s && ctx->max_span > 1) s = reserve_for(ctx, ctx->max_span, 1);
    if (s) return s;
    if (getenv("GGML_REROPE_VERBOSE")) {
        const int n_buf = ctx->attn_mode == RT_ATTN_OUTSIDE ? ctx->pieces.n_slot : 1;
        double compute = 0.0;
        for (int d = 0; d < n_buf; d++) compute += ggml_gallocr_get_buffer_size(ctx->galloc, d) / 1048576.0;
        fprintf(stderr,
                "ggml_rerope: KV cache %.1f MiB (K %s, V %s; Hadamard blocks K %d, V %d), compute buffers %.1f MiB "
                "on %d device%s (n_batch %d), %d threads%s\n",
                rt_kv_bytes(&ctx->kv) / 1048576.0, ggml_type_name(ctx->kv.type_k), ggml_type_name(ctx->kv.type_v),
                ctx->kv.k_hadamard, ctx->kv.v_hadamard, compute, n_buf, n_buf == 1 ? "" : "s", nb, n_threads,
                ctx->attn_mode == RT_ATTN_OUTSIDE ? ", attention between graph pieces" : "");
    }
    return GGML_REROPE_OK;
}

/* A cache type the attention reads at the model's head_dim, on the path this model runs. */
static ggml_rerope_status check_cache_type(const ggml_rerope_model * m, const char * field, int32_t type) {
    const int32_t hd = m->info.head_dim;
    if (!ggml_rerope_kv_type_supported(type, hd)) {
        if (ggml_rerope_kv_row_bytes(type, 32) > 0)
            return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s %s needs head_dim %% 32 == 0, this model's is %d",
                               field, ggml_rerope_kv_type_name(type), hd);
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "%s = %d is not a cache type (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl)", field,
                           type);
    }
    const char * dbg = getenv("GGML_REROPE_RUNTIME_ATTN");
    if (type != GGML_REROPE_KV_F16 && type != GGML_REROPE_KV_F32 && !rt_place_offloaded(&m->place) && dbg &&
        strcmp(dbg, "ggml") == 0)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s %s: the ggml cross-check path reads f16 or f32 caches only",
                           field, ggml_rerope_kv_type_name(type));
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_context_new(ggml_rerope_model * model, const ggml_rerope_context_params * params,
                                           ggml_rerope_context ** out) {
    rerope_clear_error();
    if (!out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!model) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "model is NULL");
    ggml_rerope_context_params p = params ? *params : ggml_rerope_context_default_params();
    if (p.n_seq_max < 1 || p.n_seq_max > GGML_REROPE_MAX_SEQ)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_seq_max must be in 1..%d, got %d", GGML_REROPE_MAX_SEQ,
                           p.n_seq_max);
    if (p.n_ctx < p.n_seq_max)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_ctx must be >= n_seq_max (%d), got %d", p.n_seq_max,
                           p.n_ctx);
    if (p.n_batch <= 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_batch must be >= 1, got %d", p.n_batch);
    ggml_rerope_status s = check_cache_type(model, "type_k", p.type_k);
    if (!s) s = check_cache_type(model, "type_v", p.type_v);
    if (s) return s;
    if (p.n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int32_t) n : 1;
    }
    if (p.n_threads > GGML_MAX_N_THREADS) p.n_threads = GGML_MAX_N_THREADS;
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;

    ggml_rerope_context * ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the context");
    ctx->model = model;
    ctx->cparams = p;
    ctx->n_seq = p.n_seq_max;
    ctx->n_ctx_seq = p.n_ctx / p.n_seq_max;
    const char * dbg = getenv("GGML_REROPE_RUNTIME_ATTN");
    ctx->attn_mode = rt_place_offloaded(&model->place) || rt_stand_in_gpus() > 0 ? RT_ATTN_OUTSIDE
                     : dbg && strcmp(dbg, "ggml") == 0                           ? RT_ATTN_GGML
                     : dbg && strcmp(dbg, "outside") == 0                        ? RT_ATTN_OUTSIDE
                                                                                 : RT_ATTN_NODE;
    /* quantized rows Hadamard-rotated unless ggml's own attention reads them (the cross-check path) or the
     * user turns it off (as llama.cpp's LLAMA_ATTN_ROT_DISABLE) */
    const char * rot_off = getenv("GGML_REROPE_ATTN_ROT_DISABLE");
    const bool rotate_kv = ctx->attn_mode != RT_ATTN_GGML && !(rot_off && atoi(rot_off) != 0);
    /* the ggml cross-check path has one causal mask per graph: one sequence at a time */
    ctx->max_span = ctx->attn_mode == RT_ATTN_GGML ? 1 : (ctx->n_seq < p.n_batch ? ctx->n_seq : p.n_batch);

    s = GGML_REROPE_OK;
    ctx->seq = calloc((size_t) ctx->n_seq, sizeof(*ctx->seq));
    ctx->attn = calloc((size_t) ctx->n_seq, sizeof(*ctx->attn));
    ctx->n_past_before = calloc((size_t) ctx->n_seq, sizeof(int32_t));
    if (!ctx->seq || !ctx->attn || !ctx->n_past_before)
        s = rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for %d sequences", ctx->n_seq);
    if (!s) s = rt_ubatch_init(&ctx->ub, p.n_batch, ctx->n_seq);
    if (!s)
        s = rt_kv_init(&ctx->kv, model, ctx->n_ctx_seq * ctx->n_seq, p.n_batch, (enum ggml_type) p.type_k,
                       (enum ggml_type) p.type_v, rotate_kv);
    if (!s) {
        ggml_rerope_scheme def = ggml_rerope_scheme_default(model);
        s = ggml_rerope_context_set_scheme(ctx, &def);
    }
    if (!s) s = setup_compute(ctx);
    if (s) {
        ggml_rerope_context_free(ctx);
        return s;
    }
    *out = ctx;
    return GGML_REROPE_OK;
}

/* Fills the graph's inputs from the planned micro-batch. */
static ggml_rerope_status set_inputs(ggml_rerope_context * ctx, const rt_graph * g, const rt_batch_shape * sh) {
    const rt_ubatch * ub = &ctx->ub;
    const int32_t n = sh->n_tokens, n_kv = rt_batch_max_n_kv(sh);
    if (g->embd) {
        ggml_rerope_status s = rt_embed_tokens(&ctx->embed, ub->tokens, n, g->embd);
        if (s) return s;
    } else {
        ggml_backend_tensor_set(g->tokens, ub->tokens, 0, sizeof(int32_t) * (size_t) n);
    }
    for (int d = 0; d < RT_MAX_DEVS; d++)
        if (g->kv_rows[d]) ggml_backend_tensor_set(g->kv_rows[d], ub->rows, 0, sizeof(int64_t) * (size_t) n);
    /* An input no node reads has no buffer (one layer, a micro-batch that only fills the cache). */
    if (g->q_pos && g->q_pos->buffer) ggml_backend_tensor_set(g->q_pos, ub->pos, 0, sizeof(int32_t) * (size_t) n);
    if (g->k_pos && g->k_pos->buffer) ggml_backend_tensor_set(g->k_pos, ctx->iota, 0, sizeof(int32_t) * (size_t) n_kv);
    if (g->out_ids) ggml_backend_tensor_set(g->out_ids, ub->out_rows, 0, sizeof(int32_t) * (size_t) sh->n_out);
    const ggml_rerope_params * attn = &ctx->attn[sh->span[0].seq]; /* the ggml path: one span */
    if (g->rope_freqs && g->rope_freqs->buffer) {
        const int nf = ctx->model->info.n_rot / 2;
        float div[512];
        for (int i = 0; i < nf && i < 512; i++) div[i] = 1.0f / attn->freq_factors[i];
        ggml_backend_tensor_set(g->rope_freqs, div, 0, sizeof(float) * (size_t) nf);
    }
    if (g->kq_mask && g->kq_mask->buffer) {
        const size_t cells = (size_t) n_kv * (size_t) n;
        if (cells > ctx->mask_cap) {
            ggml_fp16_t * p = realloc(ctx->mask, cells * sizeof(ggml_fp16_t));
            if (!p) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the attention mask");
            ctx->mask = p;
            ctx->mask_cap = cells;
        }
        const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
        const int32_t n_past = sh->span[0].n_past;
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n_kv; j++) ctx->mask[(size_t) i * n_kv + j] = j <= n_past + i ? zero : ninf;
        ggml_backend_tensor_set(g->kq_mask, ctx->mask, 0, cells * sizeof(ggml_fp16_t));
    }
    return GGML_REROPE_OK;
}

/* Computes a graph whose inputs are set, and waits for it. */
static ggml_rerope_status compute_graph(ggml_rerope_context * ctx, const rt_graph * g, const rt_batch_shape * sh) {
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) {
        const rt_pieces_attn attn = {.kv = &ctx->kv,
                                     .params = ctx->attn,
                                     .span = sh->span,
                                     .n_span = sh->n_span,
                                     .n_threads = ctx->cparams.n_threads};
        return rt_pieces_compute(&ctx->pieces, g, &attn);
    }
    ggml_rerope_status s = rt_compute_status(ggml_backend_graph_compute(ctx->backend, g->gf));
    if (!s) s = ggml_rerope_graph_status(g->gf); /* a failing attention node says so only here */
    return s;
}

/* Copies a graph's logit rows to the caller's rows: straight when they are consecutive there. */
static void read_logits(ggml_rerope_context * ctx, const rt_graph * g, float * logits) {
    const rt_ubatch * ub = &ctx->ub;
    const size_t row = (size_t) ctx->model->info.n_vocab;
    bool consecutive = true;
    for (int32_t i = 1; i < ub->n_out && consecutive; i++) consecutive = ub->out_dst[i] == ub->out_dst[0] + i;
    if (consecutive) {
        ggml_backend_tensor_get(g->logits, logits + (size_t) ub->out_dst[0] * row, 0, sizeof(float) * row * ub->n_out);
        return;
    }
    ggml_backend_tensor_get(g->logits, ctx->logits_tmp, 0, sizeof(float) * row * ub->n_out);
    for (int32_t i = 0; i < ub->n_out; i++)
        memcpy(logits + (size_t) ub->out_dst[i] * row, ctx->logits_tmp + (size_t) i * row, sizeof(float) * row);
}

/* Builds, allocates and computes the graph of the planned micro-batch. */
static ggml_rerope_status eval_ubatch(ggml_rerope_context * ctx, float * logits) {
    const rt_ubatch * ub = &ctx->ub;
    const rt_batch_shape sh = {
        .n_tokens = ub->n_tokens, .n_out = logits ? ub->n_out : 0, .n_span = ub->n_span, .span = ub->span};
    const rt_graph_plan plan = graph_plan(ctx);
    rt_graph g;
    ggml_rerope_status s = rt_graph_build(&plan, &sh, &g);
    if (s) return s;
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) s = rt_pieces_alloc(&ctx->pieces, ctx->galloc, &g);
    else if (!ggml_gallocr_alloc_graph(ctx->galloc, g.gf))
        s = rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the compute buffer for %d tokens", sh.n_tokens);
    if (s) {
        ggml_free(g.ctx);
        return s;
    }
    s = set_inputs(ctx, &g, &sh);
    if (!s) s = compute_graph(ctx, &g, &sh);
    if (!s && g.logits && logits) read_logits(ctx, &g, logits);
    ggml_free(g.ctx);
    return s;
}

/* Checks the batch (every sequence's room included) and gives each token its logit row: -1, or
 * the count of earlier tokens with logits. Returns the number of logit rows in *n_out. */
static ggml_rerope_status check_batch(ggml_rerope_context * ctx, const ggml_rerope_batch * b, int32_t * n_out) {
    const int32_t n_vocab = ctx->model->info.n_vocab;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= n_vocab)
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "tokens[%d] = %d is outside the vocabulary 0..%d", i,
                               b->tokens[i], n_vocab - 1);
        if (b->seq_id && (b->seq_id[i] < 0 || b->seq_id[i] >= ctx->n_seq))
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "seq_id[%d] = %d is outside 0..%d (n_seq_max = %d)", i,
                               b->seq_id[i], ctx->n_seq - 1, ctx->n_seq);
    }
    if ((size_t) b->n_tokens > ctx->out_idx_cap) {
        int32_t * p = realloc(ctx->out_idx, sizeof(int32_t) * (size_t) b->n_tokens);
        if (!p) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for a batch of %d tokens", b->n_tokens);
        ctx->out_idx = p;
        ctx->out_idx_cap = (size_t) b->n_tokens;
    }
    /* new tokens per sequence (in n_past_before as scratch), then the room each has */
    int32_t * n_new = ctx->n_past_before;
    for (int32_t s = 0; s < ctx->n_seq; s++) n_new[s] = 0;
    for (int32_t i = 0; i < b->n_tokens; i++) n_new[b->seq_id ? b->seq_id[i] : 0]++;
    for (int32_t s = 0; s < ctx->n_seq; s++) {
        if ((int64_t) ctx->seq[s].n_past + n_new[s] <= ctx->n_ctx_seq) continue;
        if (ctx->n_seq == 1)
            return rerope_fail(GGML_REROPE_ERR_CONTEXT_FULL,
                               "context full: %d tokens in the cache + %d new > n_ctx = %d (nothing was evaluated)",
                               ctx->seq[s].n_past, n_new[s], ctx->n_ctx_seq);
        return rerope_fail(
            GGML_REROPE_ERR_CONTEXT_FULL,
            "context full: sequence %d holds %d tokens + %d new > n_ctx_seq = %d (nothing was evaluated)", s,
            ctx->seq[s].n_past, n_new[s], ctx->n_ctx_seq);
    }
    /* logit rows: the flagged tokens, or each sequence's last token */
    int32_t k = 0;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        const int32_t s = b->seq_id ? b->seq_id[i] : 0;
        const bool out = b->logits ? b->logits[i] != 0 : --n_new[s] == 0;
        ctx->out_idx[i] = out ? k++ : -1;
    }
    *n_out = k;
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_decode(ggml_rerope_context * ctx, const ggml_rerope_batch * batch, float * logits) {
    rerope_clear_error();
    if (!ctx || !batch) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx and batch must not be NULL");
    if (batch->n_tokens < 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_tokens must be >= 0, got %d", batch->n_tokens);
    if (batch->n_tokens == 0) return GGML_REROPE_OK;
    if (!batch->tokens) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "tokens is NULL");
    int32_t n_out = 0;
    ggml_rerope_status s = check_batch(ctx, batch, &n_out);
    if (s) return s;

    for (int32_t i = 0; i < ctx->n_seq; i++) ctx->n_past_before[i] = ctx->seq[i].n_past;
    int32_t * n_past = ctx->n_past_before; /* planned from; the live lengths move after each graph */
    const rt_batch_in in = {
        .n_tokens = batch->n_tokens, .tokens = batch->tokens, .seq_id = batch->seq_id, .out_idx = ctx->out_idx};
    for (int32_t off = 0; off < batch->n_tokens;) {
        int32_t live[GGML_REROPE_MAX_SEQ];
        for (int32_t i = 0; i < ctx->n_seq; i++) live[i] = ctx->seq[i].n_past;
        const int32_t n = rt_ubatch_plan(&ctx->ub, &in, off, ctx->cparams.n_batch, ctx->max_span, live, ctx->n_ctx_seq);
        s = eval_ubatch(ctx, n_out > 0 ? logits : NULL);
        if (s) {
            for (int32_t i = 0; i < ctx->n_seq; i++) ctx->seq[i].n_past = n_past[i]; /* rows written are dropped */
            return s;
        }
        for (int32_t k = 0; k < ctx->ub.n_span; k++) ctx->seq[ctx->ub.span[k].seq].n_past += ctx->ub.span[k].n_new;
        off += n;
    }
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_eval(ggml_rerope_context * ctx, const int32_t * tokens, int32_t n_tokens, float * logits,
                                    int32_t all_logits) {
    rerope_clear_error();
    if (!ctx) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx is NULL");
    if (n_tokens < 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_tokens must be >= 0, got %d", n_tokens);
    if (n_tokens == 0) {
        if (logits) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "logits asked for, but n_tokens is 0");
        return GGML_REROPE_OK;
    }
    if (!tokens) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "tokens is NULL");
    /* sequence 0; the flags only when every row is wanted (else: the last token, or none) */
    int8_t * flags = NULL;
    if (logits && all_logits) {
        flags = malloc((size_t) n_tokens);
        if (!flags) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for %d logit flags", n_tokens);
        memset(flags, 1, (size_t) n_tokens);
    } else if (!logits) {
        flags = calloc((size_t) n_tokens, 1);
        if (!flags) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for %d logit flags", n_tokens);
    }
    const ggml_rerope_batch b = {.n_tokens = n_tokens, .tokens = tokens, .seq_id = NULL, .logits = flags};
    ggml_rerope_status s = ggml_rerope_decode(ctx, &b, logits);
    free(flags);
    return s;
}

int32_t ggml_rerope_n_past(const ggml_rerope_context * ctx) { return ggml_rerope_seq_n_past(ctx, 0); }
int32_t ggml_rerope_n_ctx(const ggml_rerope_context * ctx) { return ctx ? ctx->kv.n_ctx : 0; }
int32_t ggml_rerope_n_ctx_seq(const ggml_rerope_context * ctx) { return ctx ? ctx->n_ctx_seq : 0; }
int32_t ggml_rerope_n_seq_max(const ggml_rerope_context * ctx) { return ctx ? ctx->n_seq : 0; }

int32_t ggml_rerope_seq_n_past(const ggml_rerope_context * ctx, int32_t seq) {
    return ctx && seq >= 0 && seq < ctx->n_seq ? ctx->seq[seq].n_past : 0;
}

ggml_rerope_status ggml_rerope_seq_truncate(ggml_rerope_context * ctx, int32_t seq, int32_t n_keep) {
    rerope_clear_error();
    ggml_rerope_status s = seq_in_range(ctx, seq);
    if (s) return s;
    rt_seq * q = &ctx->seq[seq];
    if (n_keep < 0 || n_keep > q->n_past)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_keep must be in 0..n_past (%d), got %d", q->n_past, n_keep);
    q->n_past = n_keep; /* raw cache: the kept prefix needs no change */
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_truncate(ggml_rerope_context * ctx, int32_t n_keep) {
    return ggml_rerope_seq_truncate(ctx, 0, n_keep);
}

ggml_rerope_status ggml_rerope_seq_kv_remove(ggml_rerope_context * ctx, int32_t seq, int32_t p0, int32_t p1) {
    rerope_clear_error();
    ggml_rerope_status s = seq_in_range(ctx, seq);
    if (s) return s;
    rt_seq * q = &ctx->seq[seq];
    if (p0 < 0 || p0 > p1 || p1 > q->n_past)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "kv_remove needs 0 <= p0 <= p1 <= n_past (%d), got p0 = %d, p1 = %d", q->n_past, p0, p1);
    const int32_t base = seq * ctx->n_ctx_seq;
    s = rt_kv_remove_rows(&ctx->kv, base + p0, base + p1, base + q->n_past);
    if (s) return s; /* nothing was moved */
    q->n_past -= p1 - p0;
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_kv_remove(ggml_rerope_context * ctx, int32_t p0, int32_t p1) {
    return ggml_rerope_seq_kv_remove(ctx, 0, p0, p1);
}

size_t ggml_rerope_kv_bytes_per_token(const ggml_rerope_context * ctx) {
    return ctx ? rt_kv_bytes_per_token(&ctx->model->info, ctx->kv.type_k, ctx->kv.type_v) : 0;
}

/* Saved state: header, then rt_kv_get_rows' bytes. Fixed-width fields in host byte order (a state
 * is read back by the same build family on the same kind of machine, as llama.cpp's). */
#define STATE_MAGIC 0x5652524Bu /* the bytes "KRRV" on a little-endian machine */
#define STATE_VERSION 3u /* 2: separate K and V cache types; 3: their Hadamard blocks */

typedef struct state_header {
    uint32_t magic, version;
    int32_t n_layer, n_head_kv, head_dim, type_k, n_past, type_v, k_hadamard, v_hadamard;
} state_header;

static size_t state_payload_bytes(const ggml_rerope_context * ctx, int32_t n_past) {
    return (size_t) ctx->kv.n_layer * rt_kv_rows_bytes(&ctx->kv, n_past);
}

size_t ggml_rerope_state_size(const ggml_rerope_context * ctx) {
    return ctx ? sizeof(state_header) + state_payload_bytes(ctx, ctx->seq[0].n_past) : 0;
}

ggml_rerope_status ggml_rerope_state_get(const ggml_rerope_context * ctx, void * dst, size_t size) {
    rerope_clear_error();
    if (!ctx || !dst) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx and dst must not be NULL");
    const size_t need = ggml_rerope_state_size(ctx);
    if (size < need)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "the state needs %zu bytes, dst has %zu", need, size);
    const ggml_rerope_model_info * I = &ctx->model->info;
    const state_header h = {.magic = STATE_MAGIC,
                            .version = STATE_VERSION,
                            .n_layer = I->n_layer,
                            .n_head_kv = I->n_head_kv,
                            .head_dim = I->head_dim,
                            .type_k = (int32_t) ctx->kv.type_k,
                            .type_v = (int32_t) ctx->kv.type_v,
                            .k_hadamard = ctx->kv.k_hadamard,
                            .v_hadamard = ctx->kv.v_hadamard,
                            .n_past = ctx->seq[0].n_past};
    memcpy(dst, &h, sizeof(h));
    rt_kv_get_rows(&ctx->kv, ctx->seq[0].n_past, (uint8_t *) dst + sizeof(h));
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_state_set(ggml_rerope_context * ctx, const void * src, size_t size) {
    rerope_clear_error();
    if (!ctx || !src) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx and src must not be NULL");
    state_header h;
    if (size < sizeof(h))
        return rerope_fail(GGML_REROPE_ERR_IO, "state of %zu bytes is truncated: its header alone has %zu", size,
                           sizeof(h));
    memcpy(&h, src, sizeof(h));
    if (h.magic != STATE_MAGIC) return rerope_fail(GGML_REROPE_ERR_IO, "not a ggml_rerope state (bad magic)");
    if (h.version != STATE_VERSION)
        return rerope_fail(GGML_REROPE_ERR_IO, "state version %u, this library reads version %u", h.version,
                           STATE_VERSION);
    const ggml_rerope_model_info * I = &ctx->model->info;
    const struct {
        const char * name;
        int32_t state, here;
    } shape[] = {{"n_layer", h.n_layer, I->n_layer},
                 {"n_head_kv", h.n_head_kv, I->n_head_kv},
                 {"head_dim", h.head_dim, I->head_dim}};
    for (size_t i = 0; i < sizeof(shape) / sizeof(shape[0]); i++)
        if (shape[i].state != shape[i].here)
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "state is of another model: %s = %d, this model has %d",
                               shape[i].name, shape[i].state, shape[i].here);
    if (h.type_k != (int32_t) ctx->kv.type_k || h.type_v != (int32_t) ctx->kv.type_v)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "state has a %s/%s (K/V) cache, this context's is %s/%s",
                           ggml_rerope_kv_type_name(h.type_k), ggml_rerope_kv_type_name(h.type_v),
                           ggml_type_name(ctx->kv.type_k), ggml_type_name(ctx->kv.type_v));
    if (h.k_hadamard != ctx->kv.k_hadamard || h.v_hadamard != ctx->kv.v_hadamard)
        return rerope_fail(
            GGML_REROPE_ERR_INVALID_ARG,
            "state's rows are Hadamard-rotated by blocks of %d/%d (K/V, 0: not), this context's by %d/%d", h.k_hadamard,
            h.v_hadamard, ctx->kv.k_hadamard, ctx->kv.v_hadamard);
    if (h.n_past < 0 || h.n_past > ctx->n_ctx_seq)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "state holds %d tokens, this context's n_ctx%s is %d", h.n_past,
                           ctx->n_seq > 1 ? "_seq" : "", ctx->n_ctx_seq);
    const size_t need = sizeof(h) + state_payload_bytes(ctx, h.n_past);
    if (size != need)
        return rerope_fail(GGML_REROPE_ERR_IO, "state of %d tokens must have %zu bytes, got %zu (%s)", h.n_past, need,
                           size, size < need ? "truncated" : "trailing bytes");
    rt_kv_set_rows(&ctx->kv, h.n_past, (const uint8_t *) src + sizeof(h));
    ctx->seq[0].n_past = h.n_past;
    return GGML_REROPE_OK;
}
