/* The K/V storage types: ggml's names and row sizes (block layouts of ggml-common.h); the CPU
 * operator reads every one of them. */
#include "ggml_rerope.h"

#include <stddef.h>

typedef struct {
    int32_t type;
    const char * name;
    int block;          /* elements per block (1: a plain element type) */
    size_t block_bytes; /* bytes per block */
} rr_kv_type_info;

static const rr_kv_type_info rr_kv_types[] = {
    {GGML_REROPE_KV_F32, "f32", 1, 4},
    {GGML_REROPE_KV_F16, "f16", 1, 2},
    {GGML_REROPE_KV_BF16, "bf16", 1, 2},
    {GGML_REROPE_KV_Q4_0, "q4_0", 32, 2 + 16},
    {GGML_REROPE_KV_Q4_1, "q4_1", 32, 4 + 16},
    {GGML_REROPE_KV_Q5_0, "q5_0", 32, 2 + 4 + 16},
    {GGML_REROPE_KV_Q5_1, "q5_1", 32, 4 + 4 + 16},
    {GGML_REROPE_KV_Q8_0, "q8_0", 32, 2 + 32},
    {GGML_REROPE_KV_IQ4_NL, "iq4_nl", 32, 2 + 16},
};

static const rr_kv_type_info * rr_kv_type_find(int32_t type) {
    for (size_t i = 0; i < sizeof rr_kv_types / sizeof rr_kv_types[0]; i++)
        if (rr_kv_types[i].type == type) return &rr_kv_types[i];
    return NULL;
}

size_t ggml_rerope_kv_row_bytes(int32_t type, int32_t head_dim) {
    const rr_kv_type_info * t = rr_kv_type_find(type);
    if (!t || head_dim < 1 || head_dim % t->block != 0) return 0;
    return (size_t) (head_dim / t->block) * t->block_bytes;
}

const char * ggml_rerope_kv_type_name(int32_t type) {
    const rr_kv_type_info * t = rr_kv_type_find(type);
    return t ? t->name : "unknown";
}

/* every type of the table has a row loader (kv_dequant.c) */
int ggml_rerope_kv_type_supported(int32_t type, int32_t head_dim) {
    return ggml_rerope_kv_row_bytes(type, head_dim) != 0;
}
