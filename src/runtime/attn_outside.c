/* Attention outside the ggml graph, for backends that cannot run GGML_OP_CUSTOM (ggml-cuda), and
 * the execution of a model placed over several devices.
 *
 * Each layer's graph carries a placeholder where the attention output goes (rt_placeholder.h).
 * The graph runs in pieces, each a run of nodes of one device ending at a placeholder or at a copy
 * node; after a piece ending at a placeholder the ReRoPE kernel of that device (CUDA, or the host
 * kernel on the CPU) overwrites the placeholder with the attention output, reading Q from its
 * source and K/V straight from the cache buffers (the rows this piece just wrote included); at a
 * copy node the activations move to the next device (ggml_backend_tensor_copy_async: peer copy
 * between GPUs, otherwise both backends synchronised first). Queries are the cache's last n_tokens
 * rows, which are the kernel's default positions, so no position arrays are needed.
 *
 * On a GPU nothing waits on the host between pieces: ggml-cuda's stream records an event after a
 * piece, our stream waits for it, runs the kernel and records an event that ggml-cuda's stream
 * waits for before the next piece. This is ggml_backend_sched's job done by hand: the scheduler,
 * with its eval callback to reach the attention, synchronises the host after every piece (measured
 * 0.53x llama.cpp's decode speed at 8k); here a host wait happens only where the device changes,
 * once per device boundary and graph, as in the scheduler's own splits. */
#include "ggml-cpu.h"
#include "rt_cuda.h"
#include "rt_errors.h"
#include "rt_exec.h"
#include "rt_graph.h"
#include "rt_kv.h"
#include "rt_place.h"
#include "rt_placeholder.h"

#include <stdio.h>
#include <stdlib.h>

/* ggml-backend-impl.h's struct ggml_backend_event (not an installed header): for ggml-cuda its
 * context is the cudaEvent_t. slot_init checks that before relying on it. */
struct rt_backend_event_layout {
    void * device;
    void * context;
};
static void * cuda_event_of(ggml_backend_event_t ev) { return ((struct rt_backend_event_layout *) ev)->context; }

/* A GPU slot: its events, then our stream. ggml-cuda makes the event's device current to create
 * it, so the stream is created on that same device (several GPUs: each slot's stream on its own). */
static ggml_rerope_status gpu_slot_init(rt_slot * sl) {
    ggml_backend_dev_t dev = ggml_backend_get_device(sl->backend);
    sl->ev_piece = ggml_backend_event_new(dev);
    sl->ev_attn = ggml_backend_event_new(dev);
    if (!sl->ev_piece || !sl->ev_attn || !rt_cuda_event_is_valid(cuda_event_of(sl->ev_piece)) ||
        !rt_cuda_event_is_valid(cuda_event_of(sl->ev_attn))) {
        /* not a CUDA event underneath: wait on the host between pieces instead (correct, slower) */
        if (sl->ev_piece) ggml_backend_event_free(sl->ev_piece);
        if (sl->ev_attn) ggml_backend_event_free(sl->ev_attn);
        sl->ev_piece = sl->ev_attn = NULL;
        fprintf(stderr,
                "ggml_rerope: warning: %s events are not CUDA events; the GPU waits for the host at "
                "every layer\n",
                ggml_backend_dev_name(dev));
    }
    ggml_rerope_status s = rt_cuda_stream_new(&sl->stream);
    return s ? rerope_fail_in(s, "the attention stream of %s", ggml_backend_dev_name(dev)) : GGML_REROPE_OK;
}

ggml_rerope_status rt_pieces_init(rt_pieces * ex, const ggml_rerope_model * m, ggml_backend_t cpu, int n_threads,
                                  size_t max_nodes) {
    const rt_placement * pl = &m->place;
    ex->mem_size = ggml_graph_overhead_custom(max_nodes, false) + ggml_tensor_overhead();
    ex->mem = malloc(ex->mem_size);
    if (!ex->mem) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for graph metadata");
    struct ggml_init_params ip = {.mem_size = ex->mem_size, .mem_buffer = ex->mem, .no_alloc = true};
    ex->ctx = ggml_init(ip);
    if (!ex->ctx) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the graph context");
    ex->piece = ggml_new_graph_custom(ex->ctx, max_nodes, false);
    ex->slot[0].backend = cpu;
    ex->n_slot = 1;
    for (int d = 1; d < pl->n_dev; d++, ex->n_slot++) {
        rt_slot * sl = &ex->slot[d];
        ggml_backend_dev_t gpu = rt_place_gpu(pl, d);
        if (!gpu) { /* a stand-in: another CPU backend (its own threads: sharing cpu's threadpool crashes ggml) */
            sl->backend = ggml_backend_cpu_init();
            if (!sl->backend) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot start a CPU backend");
            ggml_backend_cpu_set_n_threads(sl->backend, n_threads);
            continue;
        }
        sl->backend = ggml_backend_dev_init(gpu, NULL);
        if (!sl->backend)
            return rerope_fail(GGML_REROPE_ERR_CUDA, "cannot start ggml's %s backend", ggml_backend_dev_name(gpu));
        sl->on_gpu = true;
        ggml_rerope_status s = gpu_slot_init(sl);
        if (s) return s;
    }
    return GGML_REROPE_OK;
}

void rt_pieces_free(rt_pieces * ex) {
    for (int d = 0; d < RT_MAX_DEVS; d++) {
        rt_slot * sl = &ex->slot[d];
        if (sl->ev_piece) ggml_backend_event_free(sl->ev_piece);
        if (sl->ev_attn) ggml_backend_event_free(sl->ev_attn);
        rt_cuda_stream_free(sl->stream);
        if (d > 0 && sl->backend) ggml_backend_free(sl->backend);
    }
    if (ex->ctx) ggml_free(ex->ctx);
    free(ex->mem);
}

ggml_gallocr_t rt_pieces_gallocr(const rt_pieces * ex) {
    ggml_backend_buffer_type_t bufts[RT_MAX_DEVS];
    for (int d = 0; d < ex->n_slot; d++) bufts[d] = ggml_backend_get_default_buffer_type(ex->slot[d].backend);
    return ggml_gallocr_new_n(bufts, ex->n_slot);
}

ggml_rerope_status rt_pieces_reserve(const rt_pieces * ex, ggml_gallocr_t galloc, const rt_graph * g) {
    for (int i = 0; i < ggml_graph_n_nodes(g->gf); i++) {
        struct ggml_tensor * t = ggml_graph_node(g->gf, i);
        ggml_backend_t be = ex->slot[g->node_slot[i]].backend;
        if (rt_copy_node_source(t) < 0 && !ggml_backend_supports_op(be, t))
            return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s cannot run %s (node '%s' of the model graph)",
                               ggml_backend_name(be), ggml_op_desc(t), t->name);
    }
    if (!ggml_gallocr_reserve_n(galloc, g->gf, g->node_slot, NULL))
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the compute buffers (%d device%s)", ex->n_slot,
                           ex->n_slot == 1 ? "" : "s");
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_pieces_alloc(const rt_pieces * ex, ggml_gallocr_t galloc, const rt_graph * g) {
    /* one buffer: the allocator reserves by itself; several: it refuses a new shape until reserved */
    if (ggml_gallocr_alloc_graph(galloc, g->gf)) return GGML_REROPE_OK;
    if (ex->n_slot > 1 && ggml_gallocr_reserve_n(galloc, g->gf, g->node_slot, NULL) &&
        ggml_gallocr_alloc_graph(galloc, g->gf))
        return GGML_REROPE_OK;
    return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the compute buffer for %lld tokens",
                       (long long) (g->embd ? g->embd->ne[1] : 0));
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
                                        .v_type = (int32_t) kv->type_v,
                                        .k_hadamard = kv->k_hadamard};
    return call;
}

static ggml_rerope_status run_attention(rt_slot * sl, const rt_pieces_attn * a, struct ggml_tensor * t, int il) {
    const struct ggml_tensor * q = t->src[0];
    if (il >= a->kv->n_layer || q->type != GGML_TYPE_F32 || !ggml_is_contiguous(q) || !ggml_is_contiguous(t))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "attention placeholder '%s' is malformed", t->name);
    ggml_rerope_status s = GGML_REROPE_OK;
    if (!sl->on_gpu) {
        for (int32_t k = 0; k < a->n_span && !s; k++) {
            const ggml_rerope_attn_call call = span_call(a, q, t, il, &a->span[k]);
            s = ggml_rerope_attn_host(&call, a->n_threads);
        }
        return s;
    }
    if (sl->ev_piece) {
        ggml_backend_event_record(sl->ev_piece, sl->backend);
        s = rt_cuda_stream_wait(sl->stream, cuda_event_of(sl->ev_piece));
    } else {
        ggml_backend_synchronize(sl->backend);
    }
    for (int32_t k = 0; k < a->n_span && !s; k++) {
        const ggml_rerope_attn_call call = span_call(a, q, t, il, &a->span[k]);
        s = ggml_rerope_attn_cuda(&call, sl->stream);
    }
    if (s) return s;
    if (!sl->ev_attn) return ggml_rerope_cuda_synchronize(sl->stream);
    s = rt_cuda_event_record(cuda_event_of(sl->ev_attn), sl->stream);
    if (!s) ggml_backend_event_wait(sl->backend, sl->ev_attn);
    return s;
}

/* Computes nodes j0..j1-1 of gf (one device's) on that device's backend. */
static ggml_rerope_status run_piece(rt_pieces * ex, struct ggml_cgraph * gf, int j0, int j1, int d) {
    if (j1 <= j0) return GGML_REROPE_OK;
    ggml_graph_clear(ex->piece);
    for (int i = j0; i < j1; i++) ggml_graph_add_node(ex->piece, ggml_graph_node(gf, i));
    return rt_compute_status(ggml_backend_graph_compute_async(ex->slot[d].backend, ex->piece));
}

ggml_rerope_status rt_pieces_compute(rt_pieces * ex, const rt_graph * g, const rt_pieces_attn * attn) {
    struct ggml_cgraph * gf = g->gf;
    const int n = ggml_graph_n_nodes(gf);
    ggml_rerope_status s = GGML_REROPE_OK;
    for (int j = 0, j0 = 0; j < n && !s; j++) {
        struct ggml_tensor * t = ggml_graph_node(gf, j);
        const int d = g->node_slot[j];
        const int from = rt_copy_node_source(t);
        if (from >= 0) { /* the previous device's piece, then its output moves here */
            s = run_piece(ex, gf, j0, j, g->node_slot[j0 < j ? j0 : j]);
            if (!s) ggml_backend_tensor_copy_async(ex->slot[from].backend, ex->slot[d].backend, t->src[0], t);
            j0 = j + 1;
            continue;
        }
        if (j > j0 && g->node_slot[j - 1] != d) { /* a device change without a copy: inputs only */
            s = run_piece(ex, gf, j0, j, g->node_slot[j - 1]);
            j0 = j;
        }
        const int il = rt_placeholder_layer(t);
        if (s || (il < 0 && j < n - 1)) continue;
        s = run_piece(ex, gf, j0, j + 1, d);
        j0 = j + 1;
        if (!s && il >= 0 && (s = run_attention(&ex->slot[d], attn, t, il)))
            s = rerope_fail_in(s, "layer %d attention", il);
    }
    /* the caller reads the logits and reuses the buffers: nothing may still run, on any stream */
    for (int d = 0; d < ex->n_slot; d++) {
        ggml_backend_synchronize(ex->slot[d].backend);
        rt_cuda_stream_idle(ex->slot[d].stream);
    }
    return s;
}
