/* The weights layer: the loaded model (weights.c places the tensors, model.c is the public entry:
 * file -> hyperparameters -> weights). */
#ifndef GGML_REROPE_RT_MODEL_H
#define GGML_REROPE_RT_MODEL_H

#include "rt_hparams.h"
#include "rt_place.h"
#include "rt_plan.h"

#include "ggml-backend.h"

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
    rt_placement place; /* each layer's device (its weights and KV rows), the head's; the token
                           embedding stays in host memory (looked up there) */
    rt_memory_plan plan; /* weights per device, as placed */
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
    ggml_rerope_rope_info rope_info;
    float * rope_factors[3]; /* per ggml_rerope_rope_factors: n_rot/2 values as stored (F32), or NULL */
};

/* weights.c */
ggml_rerope_status rt_weights_load(ggml_rerope_model * m, bool use_mmap);
void rt_weights_free(ggml_rerope_model * m);

#endif
