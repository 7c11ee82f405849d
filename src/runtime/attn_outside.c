/* Attention outside the ggml graph, for backends that cannot run GGML_OP_CUSTOM (ggml-cuda).
 *
 * Each layer's graph carries a placeholder where the attention output goes: a copy of Q named
 * "rerope_attn-<layer>" (GGML_OP_CONT: every backend runs it, and the allocator never places it
 * over Q). The graph runs in pieces, each ending at a placeholder; after a piece the ReRoPE kernel
 * overwrites the placeholder with the attention output, reading Q from its source and K/V straight
 * from the cache buffers (the rows this piece just wrote included). Queries are the cache's last
 * n_tokens rows, which are the kernel's default positions, so no position arrays are needed.
 *
 * On the GPU nothing waits on the host between pieces: ggml-cuda's stream records an event after a
 * piece, our stream waits for it, runs the kernel and records an event that ggml-cuda's stream
 * waits for before the next piece (ggml-backend's scheduler, with its eval callback, would instead
 * synchronise the host after every piece: measured 0.53x llama.cpp's decode speed at 8k). */
#include "errors.h"
#include "rt_cuda.h"
#include "rt_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLACEHOLDER_PREFIX "rerope_attn-"

struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il) {
    struct ggml_tensor * t = ggml_cont(c, q);
    ggml_format_name(t, PLACEHOLDER_PREFIX "%d", il);
    return t;
}

/* Layer of a placeholder, or -1 for any other node. */
static int placeholder_layer(const struct ggml_tensor * t) {
    if (t->op != GGML_OP_CONT || strncmp(t->name, PLACEHOLDER_PREFIX, sizeof(PLACEHOLDER_PREFIX) - 1) != 0)
        return -1;
    int il = -1;
    return sscanf(t->name + sizeof(PLACEHOLDER_PREFIX) - 1, "%d", &il) == 1 ? il : -1;
}

/* ggml-backend-impl.h's struct ggml_backend_event (not an installed header): for ggml-cuda its
 * context is the cudaEvent_t. rt_pieces_init checks that before relying on it. */
struct rt_backend_event_layout {
    void * device;
    void * context;
};
static void * cuda_event_of(ggml_backend_event_t ev) { return ((struct rt_backend_event_layout *) ev)->context; }

ggml_rerope_status rt_pieces_init(ggml_rerope_context * ctx) {
    const size_t n = rt_graph_max_nodes(ctx->model);
    ctx->piece_mem_size = ggml_graph_overhead_custom(n, false) + ggml_tensor_overhead();
    ctx->piece_mem = malloc(ctx->piece_mem_size);
    if (!ctx->piece_mem) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
    struct ggml_init_params ip = {.mem_size = ctx->piece_mem_size, .mem_buffer = ctx->piece_mem, .no_alloc = true};
    ctx->piece_ctx = ggml_init(ip);
    if (!ctx->piece_ctx) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the graph context");
    ctx->piece = ggml_new_graph_custom(ctx->piece_ctx, n, false);
    if (!ctx->gpu) return GGML_REROPE_OK;

    ggml_rerope_status s = rt_cuda_stream_new(&ctx->stream);
    if (s) return rerope_fail_in(s, "the attention stream");
    ggml_backend_dev_t dev = ggml_backend_get_device(ctx->gpu);
    ctx->ev_piece = ggml_backend_event_new(dev);
    ctx->ev_attn = ggml_backend_event_new(dev);
    if (!ctx->ev_piece || !ctx->ev_attn || !rt_cuda_event_is_valid(cuda_event_of(ctx->ev_piece)) ||
        !rt_cuda_event_is_valid(cuda_event_of(ctx->ev_attn))) {
        /* not a CUDA event underneath: wait on the host between pieces instead (correct, slower) */
        if (ctx->ev_piece) ggml_backend_event_free(ctx->ev_piece);
        if (ctx->ev_attn) ggml_backend_event_free(ctx->ev_attn);
        ctx->ev_piece = ctx->ev_attn = NULL;
        fprintf(stderr, "ggml_rerope: warning: %s events are not CUDA events; the GPU waits for the host at "
                        "every layer\n", ggml_backend_dev_name(dev));
    }
    return GGML_REROPE_OK;
}

void rt_pieces_free(ggml_rerope_context * ctx) {
    if (ctx->ev_piece) ggml_backend_event_free(ctx->ev_piece);
    if (ctx->ev_attn) ggml_backend_event_free(ctx->ev_attn);
    rt_cuda_stream_free(ctx->stream);
    if (ctx->piece_ctx) ggml_free(ctx->piece_ctx);
    free(ctx->piece_mem);
}

static ggml_rerope_status run_attention(ggml_rerope_context * ctx, struct ggml_tensor * t, int il) {
    const struct ggml_tensor * q = t->src[0];
    const rt_kv_cache * kv = &ctx->kv;
    if (il >= kv->n_layer || q->type != GGML_TYPE_F32 || !ggml_is_contiguous(q) || !ggml_is_contiguous(t))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "attention placeholder '%s' is malformed", t->name);
    const int32_t n_q = (int32_t) q->ne[2], n_head = (int32_t) q->ne[1];
    const int32_t n_head_kv = (int32_t) kv->k[il]->ne[1];
    const ggml_rerope_attn_call call = {
        .params = ctx->attn, .q = (const float *) q->data, .k = kv->k[il]->data, .v = kv->v[il]->data,
        .out = (float *) t->data, .q_pos = NULL, .k_pos = NULL, .n_q = n_q, .n_head = n_head, .n_kv = ctx->n_kv_now,
        .n_head_kv = n_head_kv, .kv_type = kv->type == GGML_TYPE_F16 ? GGML_REROPE_KV_F16 : GGML_REROPE_KV_F32};
    if (!ctx->gpu) return ggml_rerope_attn_host(&call, ctx->cparams.n_threads);
    ggml_rerope_status s = GGML_REROPE_OK;
    if (ctx->ev_piece) {
        ggml_backend_event_record(ctx->ev_piece, ctx->gpu);
        s = rt_cuda_stream_wait(ctx->stream, cuda_event_of(ctx->ev_piece));
    } else {
        ggml_backend_synchronize(ctx->gpu);
    }
    if (!s) s = ggml_rerope_attn_cuda(&call, ctx->stream);
    if (s) return s;
    if (!ctx->ev_attn) return ggml_rerope_cuda_synchronize(ctx->stream);
    s = rt_cuda_event_record(cuda_event_of(ctx->ev_attn), ctx->stream);
    if (!s) ggml_backend_event_wait(ctx->gpu, ctx->ev_attn);
    return s;
}

ggml_rerope_status rt_compute_in_pieces(ggml_rerope_context * ctx, struct ggml_cgraph * gf) {
    ggml_backend_t be = ctx->gpu ? ctx->gpu : ctx->backend;
    const int n = ggml_graph_n_nodes(gf);
    ggml_rerope_status s = GGML_REROPE_OK;
    for (int j = 0, j0 = 0; j < n && !s; j++) {
        struct ggml_tensor * t = ggml_graph_node(gf, j);
        const int il = placeholder_layer(t);
        if (il < 0 && j < n - 1) continue;
        ggml_graph_clear(ctx->piece);
        for (int i = j0; i <= j; i++) ggml_graph_add_node(ctx->piece, ggml_graph_node(gf, i));
        j0 = j + 1;
        s = rt_compute_status(ggml_backend_graph_compute_async(be, ctx->piece));
        if (!s && il >= 0 && (s = run_attention(ctx, t, il)))
            s = rerope_fail_in(s, "layer %d attention", il);
    }
    /* the caller reads the logits and reuses the buffers: nothing may still run, on either stream */
    ggml_backend_synchronize(be);
    rt_cuda_stream_idle(ctx->stream);
    return s;
}
