/* The hyperparameters layer (hparams.c): what the GGUF's metadata says about the model. */
#ifndef GGML_REROPE_RT_HPARAMS_H
#define GGML_REROPE_RT_HPARAMS_H

#include "rt_file.h"

typedef enum rt_arch { RT_ARCH_LLAMA = 0, RT_ARCH_QWEN2 = 1, RT_ARCH_QWEN3 = 2 } rt_arch;

/* Hyperparameters beyond the public info struct. */
typedef struct rt_hparams {
    rt_arch arch;
    int32_t n_ff;
    int64_t n_vocab_meta;  /* {arch}.vocab_size, -1 when absent */
    int64_t n_tokens_meta; /* entries of tokenizer.ggml.tokens, -1 when absent */
} rt_hparams;

ggml_rerope_status rt_hparams_load(const rt_file * f, ggml_rerope_model_info * info, rt_hparams * hp);
/* The rotary scaling keys ({arch}.rope.scaling.*); the has_* tensor flags are the weights' to set. */
ggml_rerope_status rt_rope_info_load(const rt_file * f, const ggml_rerope_model_info * info,
                                     ggml_rerope_rope_info * out);

#endif
