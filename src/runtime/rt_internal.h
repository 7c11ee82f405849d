/* Internal types of the GGUF runtime: the model (weights + hyperparameters) and the context. */
#ifndef GGML_REROPE_RT_INTERNAL_H
#define GGML_REROPE_RT_INTERNAL_H

#include "ggml_rerope_runtime.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum rt_arch { RT_ARCH_LLAMA = 0, RT_ARCH_QWEN2 = 1, RT_ARCH_QWEN3 = 2 } rt_arch;

/* Hyperparameters beyond the public info struct. */
typedef struct rt_hparams {
    rt_arch arch;
    int32_t n_ff;
} rt_hparams;

/* The opened file: gguf metadata plus the mapping of the whole file. */
typedef struct rt_file {
    char * path;
    struct gguf_context * gguf;
    void * map;       /* NULL when use_mmap = 0 */
    size_t size;      /* file size in bytes     */
    size_t data_offs; /* start of tensor data   */
    int fd;
} rt_file;

typedef struct rt_layer {
    struct ggml_tensor * attn_norm;
    struct ggml_tensor *wq, *wk, *wv, *wo;
    struct ggml_tensor *bq, *bk, *bv;      /* qwen2 (optional elsewhere)  */
    struct ggml_tensor *q_norm, *k_norm;   /* qwen3 (optional elsewhere)  */
    struct ggml_tensor * ffn_norm;
    struct ggml_tensor *ffn_gate, *ffn_up, *ffn_down;
} rt_layer;

#define RT_MAX_BUFS 8

struct ggml_rerope_model {
    ggml_rerope_model_info info;
    rt_hparams hp;
    rt_file file;

    ggml_backend_dev_t cpu_dev;
    ggml_backend_dev_t gpu_dev; /* n_gpu_layers != 0: every layer, the head and the KV cache here;
                                   the token embedding stays in host memory (looked up there) */
    /* Weight tensors live in ctx_w[i], allocated in bufs[i]; i = 0 is the plain/mmap one. */
    struct ggml_context * ctx_w[RT_MAX_BUFS];
    ggml_backend_buffer_type_t buft_w[RT_MAX_BUFS];
    ggml_backend_buffer_t bufs[RT_MAX_BUFS];
    int n_ctx_w;

    struct ggml_tensor * tok_embd;
    struct ggml_tensor * output_norm;
    struct ggml_tensor * output; /* == tok_embd when tied */
    float * freq_factors;        /* n_rot/2 multipliers (1 / rope_freqs), or NULL */
    rt_layer * layers;
};

/* Logical state of the KV cache: raw K and V per layer, {head_dim, n_head_kv, n_ctx}. */
typedef struct rt_kv_cache {
    struct ggml_context * ctx;
    ggml_backend_buffer_t buf;
    struct ggml_tensor ** k;
    struct ggml_tensor ** v;
    enum ggml_type type;
    int32_t n_ctx;
    int32_t n_layer;
} rt_kv_cache;

/* What one graph computes. */
typedef struct rt_batch_shape {
    int32_t n_tokens; /* tokens of this micro-batch                      */
    int32_t n_past;   /* cache rows before it                            */
    int32_t n_out;    /* logit rows: 0, 1 (last token) or n_tokens (all) */
} rt_batch_shape;

/* Inputs and output of a built graph. */
typedef struct rt_graph {
    struct ggml_context * ctx; /* metadata of this graph's tensors; ggml_free after compute */
    struct ggml_cgraph * gf;
    struct ggml_tensor * tokens; /* I32 {n_tokens}, NULL when embd  */
    struct ggml_tensor * embd;   /* F32 {n_embd, n_tokens}: rows looked up on the host (RT_ATTN_OUTSIDE) */
    struct ggml_tensor * kv_rows; /* I64 {n_tokens}: cache rows written (n_past..) */
    struct ggml_tensor * q_pos;  /* I32 {n_tokens}                 */
    struct ggml_tensor * k_pos;  /* I32 {n_kv}                     */
    struct ggml_tensor * out_ids; /* I32 {n_out}, NULL when all    */
    struct ggml_tensor * kq_mask; /* F16 {n_kv, n_tokens}, ggml path */
    struct ggml_tensor * rope_freqs; /* F32 {n_rot/2} GGUF divisors, ggml path with rope_freqs */
    struct ggml_tensor * logits; /* F32 {n_vocab, n_out}, NULL when n_out = 0 */
} rt_graph;

/* How attention runs inside the graph. */
typedef enum rt_attn_mode {
    RT_ATTN_NODE = 0,    /* the ggml_rerope_attn custom node, computed by ggml's CPU threads          */
    RT_ATTN_GGML = 1,    /* debug: ggml rope + flash attention (plain RoPE)                           */
    RT_ATTN_OUTSIDE = 2, /* placeholder nodes: the graph runs in pieces on one backend and the kernel
                            (CUDA, or the host one as a CPU check) runs on its buffers in between     */
} rt_attn_mode;

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
    int32_t n_kv_now;            /* cache rows the attention of the running graph reads */
    struct ggml_threadpool * threadpool;
    ggml_gallocr_t galloc;       /* the graph's buffer, on the GPU when there is one */

    /* RT_ATTN_OUTSIDE (attn_outside.c, embed_host.c) */
    void * piece_mem;             /* metadata of `piece`, the graph of one piece */
    size_t piece_mem_size;
    struct ggml_context * piece_ctx;
    struct ggml_cgraph * piece;
    void * stream;                /* GPU: our kernel's cudaStream_t */
    ggml_backend_event_t ev_piece, ev_attn; /* GPU: piece done / attention done (NULL: host waits) */
    void * embd_mem;              /* metadata of the embedding lookup graph */
    size_t embd_mem_size;
    ggml_gallocr_t embd_galloc;   /* its rows, in host memory */
    void * graph_mem; /* tensor + graph metadata, reused by every build */
    size_t graph_mem_size;
    int32_t * iota;   /* 0 .. n_ctx-1: positions of cache rows and queries */
    int64_t * iota64; /* the same, for the cache rows a graph writes */
    ggml_fp16_t * mask; /* ggml path only: causal mask, grown as needed */
    size_t mask_cap;
};

/* gguf_loader.c */
ggml_rerope_status rt_file_open(rt_file * f, const char * path, bool use_mmap);
void rt_file_close(rt_file * f);
/* Reads n bytes of a tensor's data (mapped or pread). */
ggml_rerope_status rt_file_read_tensor(const rt_file * f, int64_t tensor_id, void * dst, size_t n);
const void * rt_file_tensor_ptr(const rt_file * f, int64_t tensor_id);
/* Drops the mapped pages wholly inside [ptr, ptr + n) from this process (data copied elsewhere). */
void rt_file_release(const rt_file * f, const void * ptr, size_t n);
bool rt_type_is_matmul_weight(enum ggml_type type);

/* hparams.c */
ggml_rerope_status rt_hparams_load(const rt_file * f, ggml_rerope_model_info * info, rt_hparams * hp);

/* weights.c */
ggml_rerope_status rt_weights_load(ggml_rerope_model * m, bool use_mmap);
void rt_weights_free(ggml_rerope_model * m);

/* kv_cache.c */
ggml_rerope_status rt_kv_init(rt_kv_cache * kv, const ggml_rerope_model * m, int32_t n_ctx, enum ggml_type type);
void rt_kv_free(rt_kv_cache * kv);
size_t rt_kv_bytes_per_token(const ggml_rerope_model_info * info, enum ggml_type type);

/* context.c: a ggml compute status as ours (the message set on failure). */
ggml_rerope_status rt_compute_status(enum ggml_status gs);

/* graph.c */
size_t rt_graph_max_nodes(const ggml_rerope_model * m);
ggml_rerope_status rt_graph_build(ggml_rerope_context * ctx, const rt_batch_shape * shape, rt_graph * out);

/* attn_outside.c: the graph in pieces, the attention between them (RT_ATTN_OUTSIDE). */
/* The node our kernel overwrites with layer il's attention output (F32 like q). */
struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il);
ggml_rerope_status rt_pieces_init(ggml_rerope_context * ctx);
void rt_pieces_free(ggml_rerope_context * ctx);
/* Computes gf (allocated, inputs set) and waits for it; on failure the message is set. */
ggml_rerope_status rt_compute_in_pieces(ggml_rerope_context * ctx, struct ggml_cgraph * gf);

/* embed_host.c: token embedding rows gathered on the host into a graph input (RT_ATTN_OUTSIDE). */
ggml_rerope_status rt_embed_init(ggml_rerope_context * ctx);
void rt_embed_free(ggml_rerope_context * ctx);
ggml_rerope_status rt_embed_tokens(ggml_rerope_context * ctx, const int32_t * tokens, int32_t n,
                                   struct ggml_tensor * dst);

/* memory.c */
/* Bytes still free on dev (NULL: the host's MemAvailable), or 0 when unknown. */
size_t rt_mem_available_on(ggml_backend_dev_t dev);

#endif
