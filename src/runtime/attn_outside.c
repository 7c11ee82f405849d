/* Attention outside the ggml graph, for backends that cannot run GGML_OP_CUSTOM (ggml-cuda).
 *
 * Each layer's graph carries a placeholder where the attention output goes (rt_placeholder.h).
 * The graph runs in pieces, each ending at a placeholder; after a piece the ReRoPE kernel
 * overwrites the placeholder with the attention output, reading Q from its source and K/V straight
 * from the cache buffers (the rows this piece just wrote included). Queries are the cache's last
 * n_tokens rows, which are the kernel's default positions, so no position arrays are needed.
 *
 * On the GPU nothing waits on the host between pieces: ggml-cuda's stream records an event after a
 * piece, our stream waits for it, runs the kernel and records an event that ggml-cuda's stream
 * waits for before the next piece (ggml-backend's scheduler, with its eval callback, would instead
 * synchronise the host after every piece: measured 0.53x llama.cpp's decode speed at 8k). */
#include "rt_cuda.h"
#include "rt_errors.h"
#include "rt_exec.h"
#include "rt_kv.h"
#include "rt_placeholder.h"

#include <stdio.h>
#include <stdlib.h>

/* ggml-backend-impl.h's struct ggml_backend_event (not an installed header): for ggml-cuda its
 * context is the cudaEvent_t. rt_pieces_init checks that before relying on it. */
struct rt_backend_event_layout {
    void * device;
    void * context;
};
static void * cuda_event_of(ggml_backend_event_t ev) { return ((struct rt_backend_event_layout *) ev)->context; }

ggml_rerope_status rt_pieces_init(rt_pieces * ex, ggml_backend_t backend, bool on_gpu, size_t max_nodes) {
    ex->backend = backend;
    ex->gpu = on_gpu ? backend : NULL;
    ex->mem_size = ggml_graph_overhead_custom(max_nodes, false) + ggml_tensor_overhead();
    ex->mem = malloc(ex->mem_size);
    if (!ex->mem) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
    struct ggml_init_params ip = {.mem_size = ex->mem_size, .mem_buffer = ex->mem, .no_alloc = true};
    ex->ctx = ggml_init(ip);
    if (!ex->ctx) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the graph context");
    ex->piece = ggml_new_graph_custom(ex->ctx, max_nodes, false);
    if (!ex->gpu) return GGML_REROPE_OK;

    ggml_rerope_status s = rt_cuda_stream_new(&ex->stream);
    if (s) return rerope_fail_in(s, "the attention stream");
    ggml_backend_dev_t dev = ggml_backend_get_device(ex->gpu);
    ex->ev_piece = ggml_backend_event_new(dev);
    ex->ev_attn = ggml_backend_event_new(dev);
    if (!ex->ev_piece || !ex->ev_attn || !rt_cuda_event_is_valid(cuda_event_of(ex->ev_piece)) ||
        !rt_cuda_event_is_valid(cuda_event_of(ex->ev_attn))) {
        /* not a CUDA event underneath: wait on the host between pieces instead (correct, slower) */
        if (ex->ev_piece) ggml_backend_event_free(ex->ev_piece);
        if (ex->ev_attn) ggml_backend_event_free(ex->ev_attn);
        ex->ev_piece = ex->ev_attn = NULL;
        fprintf(stderr,
                "ggml_rerope: warning: %s events are not CUDA events; the GPU waits for the host at "
                "every layer\n",
                ggml_backend_dev_name(dev));
    }
    return GGML_REROPE_OK;
}

void rt_pieces_free(rt_pieces * ex) {
    if (ex->ev_piece) ggml_backend_event_free(ex->ev_piece);
    if (ex->ev_attn) ggml_backend_event_free(ex->ev_attn);
    rt_cuda_stream_free(ex->stream);
    if (ex->ctx) ggml_free(ex->ctx);
    free(ex->mem);
}

/* One span's call: its query rows of q and out, its sequence's cache rows (queries are the last
 * n_new of its n_kv rows: the kernel's default positions). */
static ggml_rerope_attn_call span_call(const rt_pieces_attn * a, const struct ggml_tensor * q, struct ggml_tensor * t,
                                       int il, const rt_kv_span * sp) {
    const rt_kv_cache * kv = a->kv;
    const size_t q_row = (size_t) q->ne[0] * (size_t) q->ne[1]; /* floats of one token's heads */
    const ggml_rerope_attn_call call = {.params = a->params[sp->seq],
                                        .q = (const float *) q->data + (size_t) sp->tok0 * q_row,
                                        .k = (const char *) kv->k[il]->data + (size_t) sp->kv_base * kv->k[il]->nb[2],
                                        .v = (const char *) kv->v[il]->data + (size_t) sp->kv_base * kv->v[il]->nb[2],
                                        .out = (float *) t->data + (size_t) sp->tok0 * q_row,
                                        .q_pos = NULL,
                                        .k_pos = NULL,
                                        .n_q = sp->n_new,
                                        .n_head = (int32_t) q->ne[1],
                                        .n_kv = rt_span_n_kv(sp),
                                        .n_head_kv = (int32_t) kv->k[il]->ne[1],
                                        .k_type = (int32_t) kv->type_k,
                                        .v_type = (int32_t) kv->type_v};
    return call;
}

static ggml_rerope_status run_attention(rt_pieces * ex, const rt_pieces_attn * a, struct ggml_tensor * t, int il) {
    const struct ggml_tensor * q = t->src[0];
    if (il >= a->kv->n_layer || q->type != GGML_TYPE_F32 || !ggml_is_contiguous(q) || !ggml_is_contiguous(t))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "attention placeholder '%s' is malformed", t->name);
    ggml_rerope_status s = GGML_REROPE_OK;
    if (!ex->gpu) {
        for (int32_t k = 0; k < a->n_span && !s; k++) {
            const ggml_rerope_attn_call call = span_call(a, q, t, il, &a->span[k]);
            s = ggml_rerope_attn_host(&call, a->n_threads);
        }
        return s;
    }
    if (ex->ev_piece) {
        ggml_backend_event_record(ex->ev_piece, ex->gpu);
        s = rt_cuda_stream_wait(ex->stream, cuda_event_of(ex->ev_piece));
    } else {
        ggml_backend_synchronize(ex->gpu);
    }
    for (int32_t k = 0; k < a->n_span && !s; k++) {
        const ggml_rerope_attn_call call = span_call(a, q, t, il, &a->span[k]);
        s = ggml_rerope_attn_cuda(&call, ex->stream);
    }
    if (s) return s;
    if (!ex->ev_attn) return ggml_rerope_cuda_synchronize(ex->stream);
    s = rt_cuda_event_record(cuda_event_of(ex->ev_attn), ex->stream);
    if (!s) ggml_backend_event_wait(ex->gpu, ex->ev_attn);
    return s;
}

ggml_rerope_status rt_pieces_compute(rt_pieces * ex, struct ggml_cgraph * gf, const rt_pieces_attn * attn) {
    ggml_backend_t be = ex->backend;
    const int n = ggml_graph_n_nodes(gf);
    ggml_rerope_status s = GGML_REROPE_OK;
    for (int j = 0, j0 = 0; j < n && !s; j++) {
        struct ggml_tensor * t = ggml_graph_node(gf, j);
        const int il = rt_placeholder_layer(t);
        if (il < 0 && j < n - 1) continue;
        ggml_graph_clear(ex->piece);
        for (int i = j0; i <= j; i++) ggml_graph_add_node(ex->piece, ggml_graph_node(gf, i));
        j0 = j + 1;
        s = rt_compute_status(ggml_backend_graph_compute_async(be, ex->piece));
        if (!s && il >= 0 && (s = run_attention(ex, attn, t, il))) s = rerope_fail_in(s, "layer %d attention", il);
    }
    /* the caller reads the logits and reuses the buffers: nothing may still run, on either stream */
    ggml_backend_synchronize(be);
    rt_cuda_stream_idle(ex->stream);
    return s;
}
