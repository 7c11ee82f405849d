/* The hyperparameters layer (hparams.c): what the GGUF's metadata says about the model. */
#ifndef GGML_REROPE_RT_HPARAMS_H
#define GGML_REROPE_RT_HPARAMS_H

#include "rt_file.h"

typedef enum rt_arch { RT_ARCH_LLAMA = 0, RT_ARCH_QWEN2 = 1, RT_ARCH_QWEN3 = 2 } rt_arch;

/* Hyperparameters beyond the public info struct. */
typedef struct rt_hparams {
    rt_arch arch;
    int32_t n_ff;
} rt_hparams;

ggml_rerope_status rt_hparams_load(const rt_file * f, ggml_rerope_model_info * info, rt_hparams * hp);

#endif
