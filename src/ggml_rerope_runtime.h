/*
 * ggml_rerope_runtime.h - run GGUF Llama / Qwen2 / Qwen3 models with ReRoPE attention.
 *
 * loader (gguf, mmap) -> weights in backend buffers -> one ggml graph per micro-batch
 * -> ggml_rerope_attn in every layer -> logits. The KV cache holds RAW (unrotated) keys,
 * so the position scheme can change on a live context without recomputing anything.
 *
 * Every function that can fail returns a ggml_rerope_status; ggml_rerope_last_error() has the
 * message. The getters (n_past, n_ctx, kv_bytes_per_token) return 0 for a NULL context, and
 * the *_free functions accept NULL. A model must outlive every context made from it.
 */
#ifndef GGML_REROPE_RUNTIME_H
#define GGML_REROPE_RUNTIME_H

#include "ggml_rerope.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ggml_rerope_model ggml_rerope_model;
typedef struct ggml_rerope_context ggml_rerope_context;

/* How layers spread over several GPUs (llama.cpp's llama_split_mode, same values). */
typedef enum ggml_rerope_split_mode {
    GGML_REROPE_SPLIT_MODE_NONE = 0,  /* every offloaded layer on main_gpu                              */
    GGML_REROPE_SPLIT_MODE_LAYER = 1, /* runs of layers (weights and KV rows) per GPU, by tensor_split */
    GGML_REROPE_SPLIT_MODE_ROW = 2    /* llama.cpp's row split of each matrix: ERR_UNSUPPORTED here     */
} ggml_rerope_split_mode;

#define GGML_REROPE_MAX_DEVICES 16 /* GPUs a model may spread over */

typedef struct ggml_rerope_model_params {
    int32_t n_gpu_layers; /* llama.cpp's rule: the output head counts as one more layer after the last
                             and goes first: N in 1..n_layer puts the head and the last N-1 layers on
                             the GPU(s); -1 or > n_layer: everything; 0: CPU only. The token
                             embedding stays in host memory (CUDA builds)                        */
    int32_t use_mmap;     /* 1 (default): map the file, copy only what must be repacked      */
    int32_t split_mode;   /* ggml_rerope_split_mode; default LAYER (llama.cpp's)              */
    int32_t main_gpu;     /* SPLIT_MODE_NONE: the GPU (index among ggml's CUDA devices)       */
    float tensor_split[GGML_REROPE_MAX_DEVICES]; /* share of the offloaded layers per CUDA device
                             (any scale; all 0: in proportion to each device's free memory)    */
} ggml_rerope_model_params;

/* Hyperparameters read from the GGUF metadata. */
typedef struct ggml_rerope_model_info {
    char architecture[32];  /* "llama", "qwen2", "qwen3"                          */
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_rot;          /* rotary dims                                        */
    int32_t rope_mode;      /* GGML_REROPE_MODE_NORM (llama) or _NEOX (qwen2/3)   */
    float rope_base;
    int32_t n_ctx_train;    /* L_train                                            */
    float norm_eps;
    int32_t has_rope_freqs; /* the GGUF carries a rope_freqs tensor               */
    int64_t n_params;
    int64_t weight_bytes;
} ggml_rerope_model_info;

typedef struct ggml_rerope_context_params {
    int32_t n_ctx;     /* tokens the KV cache holds, all sequences together, >= n_seq_max */
    int32_t n_batch;   /* tokens of one graph (micro-batch), default 512                  */
    int32_t n_threads; /* <= 0: number of CPU cores                                       */
    int32_t type_k;    /* ggml_rerope_kv_type of the cached keys: F16 (default), F32, BF16, Q8_0,
                          Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL (ggml's block formats, llama.cpp's bytes
                          per token; block types need head_dim % 32 == 0)                 */
    int32_t type_v;    /* the same for the values                                         */
    int32_t n_seq_max; /* independent sequences, 1 (default) .. GGML_REROPE_MAX_SEQ; each owns
                          n_ctx / n_seq_max cache rows (llama.cpp's --parallel split)      */
} ggml_rerope_context_params;

#define GGML_REROPE_MAX_SEQ 256

/* Position scheme of a context: how attention maps positions (see ggml_rerope.h). */
typedef struct ggml_rerope_scheme {
    int32_t window;             /* ReRoPE window w >= 1 (INT32_MAX: plain RoPE)            */
    int32_t far_mode;           /* ggml_rerope_far_mode                                     */
    float leaky_k;              /* FAR_LEAKY slope divisor k >= 1                           */
    int32_t group_size;         /* FAR_GROUP (Self-Extend) G >= 1                           */
    int32_t logn_train_len;     /* L_train of log-n; 0: off, else >= 2                      */
    float rope_base;            /* 0: the model's base                                      */
    const float * freq_factors; /* NULL: the model's (1 / rope_freqs, or ones); else n_rot/2
                                   multipliers of theta_m, copied by the call               */
    float attn_factor;          /* multiplies the score scale 1/sqrt(d) (YaRN temperature);
                                   0 means 1                                                */
    int32_t chunk_len;          /* FAR_CHUNK (Dual Chunk Attention) s: window/2 < s <= window */
    int32_t sliding_window;     /* 0: off; > 0: keys at distance >= it are dropped ...       */
    int32_t sink_tokens;        /* ... except the first sink_tokens positions (LM-Infinite)  */
} ggml_rerope_scheme;

/* n_gpu_layers 0, use_mmap 1, split_mode LAYER, main_gpu 0, tensor_split all 0. */
GGML_REROPE_API ggml_rerope_model_params ggml_rerope_model_default_params(void);
/* n_ctx 4096, n_batch 512, n_threads 0 (all cores), type_k / type_v F16, n_seq_max 1. */
GGML_REROPE_API ggml_rerope_context_params ggml_rerope_context_default_params(void);
/* ReRoPE, window = n_ctx_train / 2, log-n on with L_train from the model (window 1 and
 * log-n off when the model has no n_ctx_train >= 2, or model is NULL). */
GGML_REROPE_API ggml_rerope_scheme ggml_rerope_scheme_default(const ggml_rerope_model * model);

/* Architectures llama, qwen2, qwen3; weights of every type ggml's CPU backend multiplies.
 * ERR_IO: missing, not a GGUF, corrupt or truncated (tensor data past the end of the file);
 * ERR_UNSUPPORTED: another architecture, or a tensor of a type the CPU cannot multiply.
 * The message names the file and the key, tensor or type at fault. params NULL: defaults. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_model_load(const char * path, const ggml_rerope_model_params * params,
                                                          ggml_rerope_model ** out);
/* Frees the model (NULL: no-op). Free its contexts first. */
GGML_REROPE_API void ggml_rerope_model_free(ggml_rerope_model * model);
/* Copies the model's hyperparameters into *out (ERR_INVALID_ARG when either is NULL). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_model_get_info(const ggml_rerope_model * model,
                                                              ggml_rerope_model_info * out);

/* Which device runs each layer, as llama.cpp assigns them (llama-model.cpp, load_tensors): the n_layer
 * layers then the output head as layer n_layer; the last min(n_gpu_layers, n_layer + 1) of those go to
 * the GPUs (-1: all), split in order by the cumulative shares `split` (n_gpu values >= 0; all 0:
 * equal), or all on main_gpu with SPLIT_MODE_NONE. dev[0..n_layer]: -1 = CPU, else the GPU index.
 * ERR_INVALID_ARG for a bad argument, ERR_UNSUPPORTED for SPLIT_MODE_ROW, ERR_CUDA when layers are
 * asked for and n_gpu is 0. A pure function: it looks at no device. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_split_layers(int32_t n_layer, int32_t n_gpu_layers, int32_t split_mode,
                                                            int32_t main_gpu, int32_t n_gpu, const float * split,
                                                            int32_t * dev);

/* One device's share of a model and a context, estimated before anything is allocated. */
typedef struct ggml_rerope_device_plan {
    char name[32];         /* "CPU", ggml's name ("CUDA0"), "GPU<i>" for a what-if GPU        */
    int32_t is_gpu;
    int32_t first_layer;   /* its run of layers: first_layer .. first_layer + n_layers - 1      */
    int32_t n_layers;
    int32_t has_output;    /* the output head (and its logits) are here                         */
    int64_t weight_bytes;  /* the weights it holds (CPU: mapped or copied, the embedding included) */
    int64_t kv_bytes;      /* its layers' K and V rows for n_ctx                                 */
    int64_t compute_bytes; /* an estimate of its compute buffer for n_batch tokens               */
    int64_t free_bytes;    /* free memory now (what-if: as given); 0 = unknown                   */
    int32_t fits;          /* free_bytes is 0 or weight + kv + compute bytes <= free_bytes       */
} ggml_rerope_device_plan;

/* The per-device memory plan of the model file at path under mparams and cparams (the *_default_params),
 * as ggml_rerope_model_load and ggml_rerope_context_new would place it; reads only the GGUF's
 * metadata. gpu_free NULL: ggml's CUDA devices and their free memory; else n_gpu (1..MAX_DEVICES)
 * hypothetical GPUs with these free bytes ("does it fit in 8 GiB"). out[0] is the CPU, then each GPU
 * that holds a layer or the head: *n_out entries (max_out = GGML_REROPE_MAX_DEVICES + 1 always
 * suffices). A plan that does not fit is returned (fits = 0), not an error; load and context_new
 * refuse it with ERR_NO_MEMORY. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_model_plan(const char * path, const ggml_rerope_model_params * mparams,
                                                          const ggml_rerope_context_params * cparams,
                                                          const int64_t * gpu_free, int32_t n_gpu,
                                                          ggml_rerope_device_plan * out, int32_t max_out,
                                                          int32_t * n_out);

/* The GGUF's rotary metadata beyond ggml_rerope_model_info; a field whose key is absent is 0
 * (strings ""), and has_* says whether it was present. */
typedef struct ggml_rerope_rope_info {
    char scaling_type[16];   /* <arch>.rope.scaling.type ("none", "linear", "yarn", "longrope"), "" absent */
    float scaling_factor;    /* <arch>.rope.scaling.factor, else <arch>.rope.scale_linear */
    int32_t scaling_orig_ctx; /* <arch>.rope.scaling.original_context_length */
    float scaling_attn_factor; /* <arch>.rope.scaling.attn_factor */
    float yarn_ext_factor;   /* <arch>.rope.scaling.yarn_ext_factor */
    float yarn_attn_factor;  /* <arch>.rope.scaling.yarn_attn_factor */
    float yarn_beta_fast;    /* <arch>.rope.scaling.yarn_beta_fast */
    float yarn_beta_slow;    /* <arch>.rope.scaling.yarn_beta_slow */
    float yarn_log_multiplier; /* <arch>.rope.scaling.yarn_log_multiplier */
    int32_t has_scaling_factor, has_scaling_orig_ctx, has_scaling_attn_factor, has_yarn_ext_factor,
        has_yarn_attn_factor, has_yarn_beta_fast, has_yarn_beta_slow, has_yarn_log_multiplier;
    int32_t n_factors;         /* n_rot / 2: the length of each factor tensor below */
    int32_t has_rope_freqs;    /* tensor rope_freqs.weight (F32, n_rot/2) */
    int32_t has_factors_long;  /* tensor rope_factors_long.weight */
    int32_t has_factors_short; /* tensor rope_factors_short.weight */
} ggml_rerope_rope_info;

/* Copies the model's rotary metadata into *out (ERR_INVALID_ARG when either is NULL). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_model_get_rope_info(const ggml_rerope_model * model,
                                                                   ggml_rerope_rope_info * out);

typedef enum ggml_rerope_rope_factors {
    GGML_REROPE_FACTORS_ROPE_FREQS = 0, /* rope_freqs.weight */
    GGML_REROPE_FACTORS_LONG = 1,       /* rope_factors_long.weight */
    GGML_REROPE_FACTORS_SHORT = 2       /* rope_factors_short.weight */
} ggml_rerope_rope_factors;

/* Copies the n_factors values of that tensor AS STORED in the GGUF (divisors of theta, as ggml's
 * rope reads them) into out[0..n-1]; n must equal n_factors. ERR_INVALID_ARG when the tensor is
 * absent or n is wrong. Loading validated them: F32 (F16/BF16 converted), finite, > 0. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_model_get_rope_factors(const ggml_rerope_model * model, int32_t which,
                                                                      float * out, int32_t n);

/* KV cache of n_ctx tokens (ERR_NO_MEMORY, before allocating, when it exceeds the memory the
 * system has available), CPU backend with a pool of n_threads, compute buffer reserved once for
 * the largest micro-batch (n_batch is clamped to n_ctx). params NULL: defaults.
 * Debug: GGML_REROPE_RUNTIME_ATTN=ggml in the environment swaps the attention of every layer
 * for ggml's rope + flash attention (plain RoPE, ignores the scheme) as a cross-check. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_context_new(ggml_rerope_model * model,
                                                           const ggml_rerope_context_params * params,
                                                           ggml_rerope_context ** out);
/* Frees the context and its KV cache (NULL: no-op). */
GGML_REROPE_API void ggml_rerope_context_free(ggml_rerope_context * ctx);

/* Sets the position scheme of every sequence; applies to every later eval, over the cache as it is.
 * Checked like ggml_rerope_check_params (ERR_INVALID_ARG with the field named). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_context_set_scheme(ggml_rerope_context * ctx,
                                                                  const ggml_rerope_scheme * scheme);

/* Appends n_tokens to sequence 0 at positions n_past .. n_past + n_tokens - 1 (micro-batches of n_batch).
 * logits: NULL for none; else n_vocab floats of the last token (all_logits = 0) or
 * n_tokens * n_vocab floats, one row per token (all_logits = 1).
 * Fails with GGML_REROPE_ERR_CONTEXT_FULL (nothing evaluated) when n_past + n_tokens > n_ctx_seq,
 * and with GGML_REROPE_ERR_INVALID_ARG for a token outside 0 .. n_vocab-1. On any failure
 * n_past is left as it was before the call. n_tokens = 0 with logits NULL does nothing. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_eval(ggml_rerope_context * ctx, const int32_t * tokens, int32_t n_tokens,
                                                    float * logits, int32_t all_logits);

/* ---- Several sequences (n_seq_max > 1). The functions above without a sequence act on sequence 0. */

/* A batch of tokens, each appended to its sequence at that sequence's next position. Tokens of one
 * sequence keep their order; sequences may be mixed in any way (decode steps of running
 * sequences and a chunk of a new prompt in one batch: one graph per n_batch tokens, so the weights
 * are read once for all of them). Each sequence attends only to its own cache rows, under its own
 * scheme: its logits do not depend on what the others hold. */
typedef struct ggml_rerope_batch {
    int32_t n_tokens;
    const int32_t * tokens;
    const int32_t * seq_id; /* [n_tokens] in 0..n_seq_max-1; NULL: every token is sequence 0       */
    const int8_t * logits;  /* [n_tokens] nonzero: return this token's logits; NULL: the last token
                               of each sequence in the batch                                        */
} ggml_rerope_batch;

/* Evaluates a batch. logits: NULL, or n_vocab floats per token that returns logits, rows in batch
 * order. Checked before anything runs: tokens in the vocabulary and seq ids in range
 * (ERR_INVALID_ARG), every sequence's n_past + its new tokens <= n_ctx_seq (ERR_CONTEXT_FULL,
 * naming the sequence). On any failure every sequence keeps the length it had before the call. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_decode(ggml_rerope_context * ctx, const ggml_rerope_batch * batch,
                                                      float * logits);
/* Sequences of the context (context_params.n_seq_max) and the cache rows each holds at most. */
GGML_REROPE_API int32_t ggml_rerope_n_seq_max(const ggml_rerope_context * ctx);
GGML_REROPE_API int32_t ggml_rerope_n_ctx_seq(const ggml_rerope_context * ctx);
/* Tokens sequence seq holds (0 for a NULL context or a seq out of range). */
GGML_REROPE_API int32_t ggml_rerope_seq_n_past(const ggml_rerope_context * ctx, int32_t seq);
/* ggml_rerope_truncate, ggml_rerope_kv_remove and ggml_rerope_context_set_scheme for one sequence
 * (ERR_INVALID_ARG for a seq out of range). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_seq_truncate(ggml_rerope_context * ctx, int32_t seq, int32_t n_keep);
GGML_REROPE_API ggml_rerope_status ggml_rerope_seq_kv_remove(ggml_rerope_context * ctx, int32_t seq, int32_t p0,
                                                             int32_t p1);
GGML_REROPE_API ggml_rerope_status ggml_rerope_seq_set_scheme(ggml_rerope_context * ctx, int32_t seq,
                                                              const ggml_rerope_scheme * scheme);

/* ---- */

/* Tokens in sequence 0 now (the next eval's first position). */
GGML_REROPE_API int32_t ggml_rerope_n_past(const ggml_rerope_context * ctx);
/* Cache rows of all sequences (n_seq_max * n_ctx_seq: context_params.n_ctx rounded down to a
 * multiple of n_seq_max). */
GGML_REROPE_API int32_t ggml_rerope_n_ctx(const ggml_rerope_context * ctx);
/* Keeps the first n_keep tokens of the cache (0 = reset); n_keep must be in 0 .. n_past. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_truncate(ggml_rerope_context * ctx, int32_t n_keep);
/* Context shift: removes the cache's tokens p0 .. p1-1 (0 <= p0 <= p1 <= n_past, else
 * ERR_INVALID_ARG); tokens p1 .. n_past-1 move down to p0 and n_past drops by p1 - p0. Keys are
 * cached raw, so a moved token's position is simply its new index: no re-rotation (llama.cpp's
 * shift re-rotates cached keys). As there, a kept token's K/V rows of layers > 0 still hold what
 * it computed while the removed tokens were in context. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_kv_remove(ggml_rerope_context * ctx, int32_t p0, int32_t p1);
/* Bytes of K + V cache per token, all layers. */
GGML_REROPE_API size_t ggml_rerope_kv_bytes_per_token(const ggml_rerope_context * ctx);

/* Saved state (a prompt cache) of sequence 0: a small header (magic, version, n_layer, n_head_kv, head_dim, cache
 * type, n_past) and the raw K and V rows 0..n_past-1 of every layer. Keys are cached unrotated, so a
 * state is valid under every position scheme: set it, change the scheme, and the next eval equals what
 * changing the scheme of the saving context would give. (Rows of layers > 0 were computed by attention
 * under the saving scheme, so only a one-layer model equals a fresh prefill under the new one.) The
 * scheme itself is not part of the state. */
/* Bytes ggml_rerope_state_get writes now (0 for a NULL context). */
GGML_REROPE_API size_t ggml_rerope_state_size(const ggml_rerope_context * ctx);
/* Writes the state into dst; size must be >= ggml_rerope_state_size (else ERR_INVALID_ARG). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_state_get(const ggml_rerope_context * ctx, void * dst, size_t size);
/* Loads a state: the cache then holds its n_past tokens. Everything is checked before anything is
 * written, so on failure the context is unchanged: ERR_IO for no state, another version or a size
 * that does not match the header (truncated); ERR_INVALID_ARG for another model's shapes, another
 * cache type or n_past > n_ctx (the message names what differs). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_state_set(ggml_rerope_context * ctx, const void * src, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* GGML_REROPE_RUNTIME_H */
