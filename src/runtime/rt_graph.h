/* The graph layer (graph.c): one ggml graph per micro-batch over the model and the KV cache. */
#ifndef GGML_REROPE_RT_GRAPH_H
#define GGML_REROPE_RT_GRAPH_H

#include "rt_kv.h"

/* What one graph computes: n_tokens from one or more sequences, grouped by sequence (spans). */
typedef struct rt_batch_shape {
    int32_t n_tokens;        /* tokens of this micro-batch                                        */
    int32_t n_out;           /* logit rows: 0, n_tokens (every row, in graph order) or fewer (out_ids) */
    int32_t n_span;          /* >= 1                                                               */
    const rt_kv_span * span; /* [n_span]: each sequence's tokens and cache rows, in graph order     */
} rt_batch_shape;

/* The most cache rows one span's attention reads. */
int32_t rt_batch_max_n_kv(const rt_batch_shape * sh);

/* Inputs and output of a built graph. */
typedef struct rt_graph {
    struct ggml_context * ctx; /* metadata of this graph's tensors; ggml_free after compute */
    struct ggml_cgraph * gf;
    struct ggml_tensor * tokens; /* I32 {n_tokens}, NULL when embd  */
    struct ggml_tensor * embd;   /* F32 {n_embd, n_tokens}: rows looked up on the host (RT_ATTN_OUTSIDE) */
    struct ggml_tensor * kv_rows[RT_MAX_DEVS]; /* I64 {n_tokens}: cache row of each token's K and V, one
                                                  per device with layers (NULL: none there) */
    struct ggml_tensor * q_pos;  /* I32 {n_tokens}: each token's position in its sequence */
    struct ggml_tensor * k_pos;  /* I32 {max n_kv}: 0, 1, ... (a span reads the first n_kv) */
    struct ggml_tensor * out_ids; /* I32 {n_out}, NULL when all    */
    struct ggml_tensor * kq_mask; /* F16 {n_kv, n_tokens}, ggml path (one span) */
    struct ggml_tensor * rope_freqs; /* F32 {n_rot/2} GGUF divisors, ggml path with rope_freqs */
    struct ggml_tensor * logits; /* F32 {n_vocab, n_out}, NULL when n_out = 0 */
    int * node_slot; /* RT_ATTN_OUTSIDE: [n_nodes] the device (index into the placement) of each node */
} rt_graph;

/* The inputs of the pieces path, allocated once per context for n_batch tokens, each on the device
 * whose nodes read it; a graph's inputs are views of them, so the allocator has no leaf to place
 * (ggml_gallocr_reserve_n would need each leaf's device, and ggml has no public leaf access). */
typedef struct rt_graph_inputs {
    struct ggml_context * ctx[RT_MAX_DEVS];
    ggml_backend_buffer_t buf[RT_MAX_DEVS];
    struct ggml_tensor * embd;                 /* F32 {n_embd, n_batch}, on layer 0's device   */
    struct ggml_tensor * out_ids;              /* I32 {n_batch}, on the last layer's device     */
    struct ggml_tensor * kv_rows[RT_MAX_DEVS]; /* I64 {n_batch}, per device with layers         */
} rt_graph_inputs;

ggml_rerope_status rt_graph_inputs_init(rt_graph_inputs * in, const ggml_rerope_model * m, int32_t n_batch);
void rt_graph_inputs_free(rt_graph_inputs * in);

/* How attention runs inside the graph. */
typedef enum rt_attn_mode {
    RT_ATTN_NODE = 0,    /* the ggml_rerope_attn custom node, computed by ggml's CPU threads          */
    RT_ATTN_GGML = 1,    /* debug: ggml rope + flash attention (plain RoPE)                           */
    RT_ATTN_OUTSIDE = 2, /* placeholder nodes: the graph runs in pieces, each on its layer's device,
                            the kernel (CUDA, or the host one on the CPU) on the cache in between, a
                            copy node where the activations move to the next layer's device       */
} rt_attn_mode;

/* What every graph of one context is built from. */
typedef struct rt_graph_plan {
    const ggml_rerope_model * model;
    const rt_kv_cache * kv;
    const ggml_rerope_params * attn; /* [n_seq]: each sequence's attention parameters, alive while graphs compute */
    rt_attn_mode mode;
    void * mem;      /* tensor + graph metadata, reused by every build: rt_graph_mem_size() bytes */
    size_t mem_size;
    int * slot_mem;  /* RT_ATTN_OUTSIDE: rt_graph_max_nodes() + n_layer ints: node_slot, layer ends */
    const rt_graph_inputs * inputs; /* RT_ATTN_OUTSIDE */
    int32_t max_span; /* what mem was sized for */
} rt_graph_plan;

/* The most nodes a graph of m with up to max_span spans has. */
size_t rt_graph_max_nodes(const ggml_rerope_model * m, int32_t max_span);
/* Bytes of metadata (tensors and graph) the largest such graph needs. */
size_t rt_graph_mem_size(const ggml_rerope_model * m, int32_t max_span);
ggml_rerope_status rt_graph_build(const rt_graph_plan * plan, const rt_batch_shape * shape, rt_graph * out);

#endif
