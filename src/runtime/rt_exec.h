/* The executor layer (attn_outside.c): a built, allocated graph computed in pieces on one backend,
 * with our attention kernel run between two pieces on the KV cache (RT_ATTN_OUTSIDE). */
#ifndef GGML_REROPE_RT_EXEC_H
#define GGML_REROPE_RT_EXEC_H

#include "rt_kv.h"

/* The executor's own state; zeroed = not started (rt_pieces_free accepts it). */
typedef struct rt_pieces {
    ggml_backend_t backend;       /* runs every piece: the GPU's, or the CPU's as a check of this path */
    ggml_backend_t gpu;           /* == backend on the GPU (our CUDA kernel), NULL on the CPU (host kernel) */
    void * mem;                   /* metadata of `piece`, the graph of one piece */
    size_t mem_size;
    struct ggml_context * ctx;
    struct ggml_cgraph * piece;
    void * stream;                /* GPU: our kernel's cudaStream_t */
    ggml_backend_event_t ev_piece, ev_attn; /* GPU: piece done / attention done (NULL: host waits) */
} rt_pieces;

/* What the attention between two pieces reads, for one graph: per span (sequence), its run of query
 * rows and its cache rows, under its sequence's parameters. */
typedef struct rt_pieces_attn {
    const rt_kv_cache * kv;
    const ggml_rerope_params * params; /* [n_seq], indexed by span.seq */
    const rt_kv_span * span;
    int32_t n_span;
    int32_t n_threads; /* the host kernel's */
} rt_pieces_attn;

/* backend: where the pieces run (on_gpu: ggml-cuda's, ordered against our stream by events);
 * max_nodes: the most nodes one graph has. */
ggml_rerope_status rt_pieces_init(rt_pieces * ex, ggml_backend_t backend, bool on_gpu, size_t max_nodes);
void rt_pieces_free(rt_pieces * ex);
/* Computes gf (allocated, inputs set) and waits for it; on failure the message is set. */
ggml_rerope_status rt_pieces_compute(rt_pieces * ex, struct ggml_cgraph * gf, const rt_pieces_attn * attn);

#endif
