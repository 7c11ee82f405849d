/* The executor layer (attn_outside.c): a built graph computed in pieces, each on the backend of its
 * device; between two pieces either our attention kernel on the KV cache (RT_ATTN_OUTSIDE) or a copy
 * of the activations to the next device. */
#ifndef GGML_REROPE_RT_EXEC_H
#define GGML_REROPE_RT_EXEC_H

#include "rt_graph.h"
#include "rt_kv.h"

#include "ggml-alloc.h"

/* One device of the placement: its backend and, on a GPU, the stream our kernel runs on. */
typedef struct rt_slot {
    ggml_backend_t backend; /* computes its pieces (slot 0: the context's CPU backend, not owned) */
    bool on_gpu;            /* our CUDA kernel for its layers' attention, else the host kernel      */
    void * stream;          /* GPU: our kernel's cudaStream_t */
    ggml_backend_event_t ev_piece, ev_attn; /* GPU: piece done / attention done (NULL: host waits) */
} rt_slot;

/* The executor's own state; zeroed = not started (rt_pieces_free accepts it). */
typedef struct rt_pieces {
    rt_slot slot[RT_MAX_DEVS]; /* indexed as the model's placement */
    int n_slot;
    void * mem;                /* metadata of `piece`, the graph of one piece */
    size_t mem_size;
    struct ggml_context * ctx;
    struct ggml_cgraph * piece;
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

/* One slot per device of m's placement: cpu for the CPU (and a new CPU backend of n_threads per
 * stand-in), a new backend per GPU; max_nodes: the most nodes one graph has. */
ggml_rerope_status rt_pieces_init(rt_pieces * ex, const ggml_rerope_model * m, ggml_backend_t cpu, int n_threads,
                                  size_t max_nodes);
void rt_pieces_free(rt_pieces * ex);
/* A compute allocator with one buffer per slot (NULL: out of memory). */
ggml_gallocr_t rt_pieces_gallocr(const rt_pieces * ex);
/* Checks that each node's backend runs it, then reserves the allocator for g (its worst case). */
ggml_rerope_status rt_pieces_reserve(const rt_pieces * ex, ggml_gallocr_t galloc, const rt_graph * g);
/* Allocates g's tensors, reserving again when its shape needs it. */
ggml_rerope_status rt_pieces_alloc(const rt_pieces * ex, ggml_gallocr_t galloc, const rt_graph * g);
/* Computes g (allocated, inputs set) and waits for it; on failure the message is set. */
ggml_rerope_status rt_pieces_compute(rt_pieces * ex, const rt_graph * g, const rt_pieces_attn * attn);
/* The backend that computes slot d's nodes. */
static inline ggml_backend_t rt_pieces_backend(const rt_pieces * ex, int d) { return ex->slot[d].backend; }

#endif
