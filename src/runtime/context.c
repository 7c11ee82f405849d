/* Context: KV cache + backends + compute allocator; micro-batched eval, truncate, scheme.
 * CPU: one graph per micro-batch with the attention as a custom node, on ggml's CPU threads.
 * GPU (and GGML_REROPE_RUNTIME_ATTN=outside on the CPU, to check that path): the graph runs on
 * the one backend in pieces, with our kernel between them (attn_outside.c). */
#define _DEFAULT_SOURCE
#include "rt_embed.h"
#include "rt_errors.h"
#include "rt_exec.h"
#include "rt_graph.h"
#include "rt_kv.h"

#include "ggml-alloc.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ggml_rerope_context {
    ggml_rerope_model * model;
    ggml_rerope_context_params cparams;
    rt_kv_cache kv;
    int32_t n_past;

    ggml_rerope_scheme scheme;
    float * scheme_freq_factors; /* owned copy of scheme.freq_factors */
    ggml_rerope_params attn;     /* per-layer attention parameters, alive while graphs compute */
    rt_attn_mode attn_mode;

    ggml_backend_t backend;      /* CPU */
    ggml_backend_t gpu;          /* the GPU device's, when the model is there (else NULL) */
    struct ggml_threadpool * threadpool;
    ggml_gallocr_t galloc;       /* the graph's buffer, on the GPU when there is one */
    rt_pieces pieces;            /* RT_ATTN_OUTSIDE: the graph in pieces, attention between them */
    rt_host_embed embed;         /* RT_ATTN_OUTSIDE: the token embedding looked up on the host */

    void * graph_mem; /* tensor + graph metadata, reused by every build */
    size_t graph_mem_size;
    int32_t * iota;   /* 0 .. n_ctx-1: positions of cache rows and queries */
    int64_t * iota64; /* the same, for the cache rows a graph writes */
    ggml_fp16_t * mask; /* ggml path only: causal mask, grown as needed */
    size_t mask_cap;
};

ggml_rerope_context_params ggml_rerope_context_default_params(void) {
    ggml_rerope_context_params p = {.n_ctx = 4096, .n_batch = 512, .n_threads = 0, .kv_type = GGML_REROPE_KV_F16};
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
    p->logn_train_len = s->logn_train_len;
    p->scale = (s->attn_factor > 0.0f ? s->attn_factor : 1.0f) / sqrtf((float) I->head_dim);
    p->causal = 1;
    return ggml_rerope_check_params(p);
}

ggml_rerope_status ggml_rerope_context_set_scheme(ggml_rerope_context * ctx, const ggml_rerope_scheme * scheme) {
    rerope_clear_error();
    if (!ctx || !scheme) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx and scheme must not be NULL");
    const int n = ctx->model->info.n_rot / 2;
    float * ff = NULL;
    if (scheme->freq_factors) {
        ff = malloc(sizeof(float) * (size_t) (n > 0 ? n : 1));
        if (!ff) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory copying freq_factors");
        memcpy(ff, scheme->freq_factors, sizeof(float) * (size_t) n);
    }
    ggml_rerope_params p;
    ggml_rerope_status s = scheme_to_params(ctx->model, scheme, ff, &p);
    if (s) {
        free(ff);
        return s; /* the old scheme stays */
    }
    free(ctx->scheme_freq_factors);
    ctx->scheme_freq_factors = ff;
    ctx->scheme = *scheme;
    ctx->scheme.freq_factors = ff;
    ctx->attn = p;
    return GGML_REROPE_OK;
}

void ggml_rerope_context_free(ggml_rerope_context * ctx) {
    if (!ctx) return;
    if (ctx->galloc) ggml_gallocr_free(ctx->galloc);
    rt_pieces_free(&ctx->pieces);
    rt_embed_free(&ctx->embed);
    if (ctx->gpu) ggml_backend_free(ctx->gpu);
    if (ctx->backend) ggml_backend_free(ctx->backend);
    if (ctx->threadpool) ggml_threadpool_free(ctx->threadpool);
    rt_kv_free(&ctx->kv);
    free(ctx->graph_mem);
    free(ctx->scheme_freq_factors);
    free(ctx->iota);
    free(ctx->iota64);
    free(ctx->mask);
    free(ctx);
}

static rt_graph_plan graph_plan(const ggml_rerope_context * ctx) {
    const rt_graph_plan plan = {.model = ctx->model,
                                .kv = &ctx->kv,
                                .attn = &ctx->attn,
                                .mode = ctx->attn_mode,
                                .mem = ctx->graph_mem,
                                .mem_size = ctx->graph_mem_size};
    return plan;
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

    ctx->graph_mem_size = rt_graph_mem_size(ctx->model);
    ctx->graph_mem = malloc(ctx->graph_mem_size);
    ctx->iota = malloc(sizeof(int32_t) * (size_t) ctx->kv.n_ctx);
    ctx->iota64 = malloc(sizeof(int64_t) * (size_t) ctx->kv.n_ctx);
    if (!ctx->graph_mem || !ctx->iota || !ctx->iota64)
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
    for (int32_t i = 0; i < ctx->kv.n_ctx; i++) ctx->iota[i] = i, ctx->iota64[i] = i;

    if (ctx->model->gpu_dev) {
        ctx->gpu = ggml_backend_dev_init(ctx->model->gpu_dev, NULL);
        if (!ctx->gpu)
            return rerope_fail(GGML_REROPE_ERR_CUDA, "cannot start ggml's %s backend",
                               ggml_backend_dev_name(ctx->model->gpu_dev));
    }
    ggml_backend_t main = ctx->gpu ? ctx->gpu : ctx->backend;
    ctx->galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(main));
    if (!ctx->galloc) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the compute allocator");
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) {
        ggml_rerope_status s = rt_pieces_init(&ctx->pieces, main, ctx->gpu != NULL, rt_graph_max_nodes(ctx->model));
        if (!s) s = rt_embed_init(&ctx->embed, ctx->model->tok_embd, ctx->backend);
        if (s) return s;
    }
    /* Reserve once for the largest micro-batch: n_batch tokens, all logits, a full cache. */
    const int32_t nb = ctx->cparams.n_batch;
    rt_batch_shape worst = {.n_tokens = nb, .n_past = ctx->kv.n_ctx - nb, .n_out = nb};
    const rt_graph_plan plan = graph_plan(ctx);
    rt_graph g;
    ggml_rerope_status s = rt_graph_build(&plan, &worst, &g);
    if (s) return s;
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) /* one backend runs every node: ask it first, not crash later */
        for (int i = 0; i < ggml_graph_n_nodes(g.gf); i++) {
            struct ggml_tensor * t = ggml_graph_node(g.gf, i);
            if (!ggml_backend_supports_op(main, t)) {
                s = rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s cannot run %s (node '%s' of the model graph)",
                                ggml_backend_name(main), ggml_op_desc(t), t->name);
                ggml_free(g.ctx);
                return s;
            }
        }
    const bool ok = ggml_gallocr_reserve(ctx->galloc, g.gf);
    ggml_free(g.ctx);
    if (!ok) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the compute buffer for n_batch = %d", nb);
    if (getenv("GGML_REROPE_VERBOSE"))
        fprintf(stderr,
                "ggml_rerope: KV cache %.1f MiB (%s), compute buffer %.1f MiB on %s (n_batch %d), %d threads%s\n",
                ggml_backend_buffer_get_size(ctx->kv.buf) / 1048576.0, ggml_type_name(ctx->kv.type),
                ggml_gallocr_get_buffer_size(ctx->galloc, 0) / 1048576.0, ggml_backend_name(main), nb, n_threads,
                ctx->attn_mode == RT_ATTN_OUTSIDE ? ", attention between graph pieces" : "");
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_context_new(ggml_rerope_model * model, const ggml_rerope_context_params * params,
                                           ggml_rerope_context ** out) {
    rerope_clear_error();
    if (!out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!model) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "model is NULL");
    ggml_rerope_context_params p = params ? *params : ggml_rerope_context_default_params();
    if (p.n_ctx <= 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_ctx must be >= 1, got %d", p.n_ctx);
    if (p.n_batch <= 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_batch must be >= 1, got %d", p.n_batch);
    if (p.kv_type != GGML_REROPE_KV_F16 && p.kv_type != GGML_REROPE_KV_F32)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "kv_type must be F16 (%d) or F32 (%d), got %d",
                           GGML_REROPE_KV_F16, GGML_REROPE_KV_F32, p.kv_type);
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
    const char * dbg = getenv("GGML_REROPE_RUNTIME_ATTN");
    ctx->attn_mode = model->gpu_dev                       ? RT_ATTN_OUTSIDE
                     : dbg && strcmp(dbg, "ggml") == 0    ? RT_ATTN_GGML
                     : dbg && strcmp(dbg, "outside") == 0 ? RT_ATTN_OUTSIDE
                                                          : RT_ATTN_NODE;

    ggml_rerope_status s =
        rt_kv_init(&ctx->kv, model, p.n_ctx, p.kv_type == GGML_REROPE_KV_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32);
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

/* Fills the graph's inputs for tokens[0..n_tokens) at cache rows n_past... */
static ggml_rerope_status set_inputs(ggml_rerope_context * ctx, const rt_graph * g, const rt_batch_shape * sh,
                                     const int32_t * tokens) {
    const int32_t n = sh->n_tokens, n_kv = rt_batch_n_kv(sh);
    if (g->embd) {
        ggml_rerope_status s = rt_embed_tokens(&ctx->embed, tokens, n, g->embd);
        if (s) return s;
    } else {
        ggml_backend_tensor_set(g->tokens, tokens, 0, sizeof(int32_t) * (size_t) n);
    }
    ggml_backend_tensor_set(g->kv_rows, ctx->iota64 + sh->n_past, 0, sizeof(int64_t) * (size_t) n);
    /* An input no node reads has no buffer (one layer, a micro-batch that only fills the cache). */
    if (g->q_pos && g->q_pos->buffer)
        ggml_backend_tensor_set(g->q_pos, ctx->iota + sh->n_past, 0, sizeof(int32_t) * (size_t) n);
    if (g->k_pos && g->k_pos->buffer) ggml_backend_tensor_set(g->k_pos, ctx->iota, 0, sizeof(int32_t) * (size_t) n_kv);
    if (g->out_ids) {
        int32_t last = n - 1;
        ggml_backend_tensor_set(g->out_ids, &last, 0, sizeof(int32_t));
    }
    if (g->rope_freqs && g->rope_freqs->buffer) {
        const int nf = ctx->model->info.n_rot / 2;
        float div[512];
        for (int i = 0; i < nf && i < 512; i++) div[i] = 1.0f / ctx->attn.freq_factors[i];
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
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n_kv; j++) ctx->mask[(size_t) i * n_kv + j] = j <= sh->n_past + i ? zero : ninf;
        ggml_backend_tensor_set(g->kq_mask, ctx->mask, 0, cells * sizeof(ggml_fp16_t));
    }
    return GGML_REROPE_OK;
}

/* Computes a graph whose inputs are set, and waits for it. */
static ggml_rerope_status compute_graph(ggml_rerope_context * ctx, const rt_graph * g, const rt_batch_shape * sh) {
    if (ctx->attn_mode == RT_ATTN_OUTSIDE) {
        const rt_pieces_attn attn = {
            .kv = &ctx->kv, .params = &ctx->attn, .n_kv = rt_batch_n_kv(sh), .n_threads = ctx->cparams.n_threads};
        return rt_pieces_compute(&ctx->pieces, g->gf, &attn);
    }
    ggml_rerope_status s = rt_compute_status(ggml_backend_graph_compute(ctx->backend, g->gf));
    if (!s) s = ggml_rerope_graph_status(g->gf); /* a failing attention node says so only here */
    return s;
}

static ggml_rerope_status eval_batch(ggml_rerope_context * ctx, const rt_batch_shape * sh, const int32_t * tokens,
                                     float * logits) {
    const rt_graph_plan plan = graph_plan(ctx);
    rt_graph g;
    ggml_rerope_status s = rt_graph_build(&plan, sh, &g);
    if (s) return s;
    if (!ggml_gallocr_alloc_graph(ctx->galloc, g.gf)) {
        ggml_free(g.ctx);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the compute buffer for %d tokens", sh->n_tokens);
    }
    s = set_inputs(ctx, &g, sh, tokens);
    if (!s) s = compute_graph(ctx, &g, sh);
    if (!s && g.logits && logits)
        ggml_backend_tensor_get(g.logits, logits, 0,
                                sizeof(float) * (size_t) sh->n_out * (size_t) ctx->model->info.n_vocab);
    ggml_free(g.ctx);
    return s;
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
    const int32_t n_vocab = ctx->model->info.n_vocab;
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "tokens[%d] = %d is outside the vocabulary 0..%d", i,
                               tokens[i], n_vocab - 1);
    if ((int64_t) ctx->n_past + n_tokens > ctx->kv.n_ctx)
        return rerope_fail(GGML_REROPE_ERR_CONTEXT_FULL,
                           "context full: %d tokens in the cache + %d new > n_ctx = %d (nothing was evaluated)",
                           ctx->n_past, n_tokens, ctx->kv.n_ctx);

    const int32_t n_past0 = ctx->n_past;
    for (int32_t off = 0; off < n_tokens; off += ctx->cparams.n_batch) {
        const int32_t n = n_tokens - off < ctx->cparams.n_batch ? n_tokens - off : ctx->cparams.n_batch;
        const bool last = off + n == n_tokens;
        rt_batch_shape sh = {.n_tokens = n, .n_past = ctx->n_past, .n_out = 0};
        float * dst = NULL;
        if (logits && all_logits) {
            sh.n_out = n;
            dst = logits + (size_t) off * (size_t) n_vocab;
        } else if (logits && last) {
            sh.n_out = 1;
            dst = logits;
        }
        ggml_rerope_status s = eval_batch(ctx, &sh, tokens + off, dst);
        if (s) {
            ctx->n_past = n_past0; /* rows written past n_past0 are dropped */
            return s;
        }
        ctx->n_past += n;
    }
    return GGML_REROPE_OK;
}

int32_t ggml_rerope_n_past(const ggml_rerope_context * ctx) { return ctx ? ctx->n_past : 0; }
int32_t ggml_rerope_n_ctx(const ggml_rerope_context * ctx) { return ctx ? ctx->kv.n_ctx : 0; }

ggml_rerope_status ggml_rerope_truncate(ggml_rerope_context * ctx, int32_t n_keep) {
    rerope_clear_error();
    if (!ctx) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx is NULL");
    if (n_keep < 0 || n_keep > ctx->n_past)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_keep must be in 0..n_past (%d), got %d", ctx->n_past,
                           n_keep);
    ctx->n_past = n_keep; /* raw cache: the kept prefix needs no change */
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_kv_remove(ggml_rerope_context * ctx, int32_t p0, int32_t p1) {
    rerope_clear_error();
    if (!ctx) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "ctx is NULL");
    if (p0 < 0 || p0 > p1 || p1 > ctx->n_past)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "kv_remove needs 0 <= p0 <= p1 <= n_past (%d), got p0 = %d, p1 = %d", ctx->n_past, p0, p1);
    ggml_rerope_status s = rt_kv_remove_rows(&ctx->kv, p0, p1, ctx->n_past);
    if (s) return s; /* nothing was moved */
    ctx->n_past -= p1 - p0;
    return GGML_REROPE_OK;
}

size_t ggml_rerope_kv_bytes_per_token(const ggml_rerope_context * ctx) {
    return ctx ? rt_kv_bytes_per_token(&ctx->model->info, ctx->kv.type) : 0;
}

/* Saved state: header, then rt_kv_get_rows' bytes. Fixed-width fields in host byte order (a state
 * is read back by the same build family on the same kind of machine, as llama.cpp's). */
#define STATE_MAGIC 0x5652524Bu /* the bytes "KRRV" on a little-endian machine */
#define STATE_VERSION 1u

typedef struct state_header {
    uint32_t magic, version;
    int32_t n_layer, n_head_kv, head_dim, kv_type, n_past, reserved;
} state_header;

static size_t state_payload_bytes(const ggml_rerope_context * ctx, int32_t n_past) {
    return 2 * (size_t) ctx->kv.n_layer * rt_kv_rows_bytes(&ctx->kv, n_past);
}

size_t ggml_rerope_state_size(const ggml_rerope_context * ctx) {
    return ctx ? sizeof(state_header) + state_payload_bytes(ctx, ctx->n_past) : 0;
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
                            .kv_type = (int32_t) ctx->kv.type,
                            .n_past = ctx->n_past};
    memcpy(dst, &h, sizeof(h));
    rt_kv_get_rows(&ctx->kv, ctx->n_past, (uint8_t *) dst + sizeof(h));
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
    if (h.kv_type != (int32_t) ctx->kv.type) {
        const char * st = h.kv_type == GGML_TYPE_F16 ? "f16" : h.kv_type == GGML_TYPE_F32 ? "f32" : "unknown";
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "state has a %s KV cache, this context's is %s", st,
                           ggml_type_name(ctx->kv.type));
    }
    if (h.n_past < 0 || h.n_past > ctx->kv.n_ctx)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "state holds %d tokens, this context's n_ctx is %d", h.n_past,
                           ctx->kv.n_ctx);
    const size_t need = sizeof(h) + state_payload_bytes(ctx, h.n_past);
    if (size != need)
        return rerope_fail(GGML_REROPE_ERR_IO, "state of %d tokens must have %zu bytes, got %zu (%s)", h.n_past, need,
                           size, size < need ? "truncated" : "trailing bytes");
    rt_kv_set_rows(&ctx->kv, h.n_past, (const uint8_t *) src + sizeof(h));
    ctx->n_past = h.n_past;
    return GGML_REROPE_OK;
}
