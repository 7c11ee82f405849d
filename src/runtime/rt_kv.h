/* The KV cache layer (kv_cache.c): raw (unrotated) K and V per layer, on that layer's device. */
#ifndef GGML_REROPE_RT_KV_H
#define GGML_REROPE_RT_KV_H

#include "rt_model.h"

/* Logical state of the KV cache: raw K and V per layer, {head_dim, n_head_kv, n_ctx}. */
typedef struct rt_kv_cache {
    struct ggml_context * ctx[RT_MAX_DEVS]; /* per device of the placement: its layers' tensors */
    ggml_backend_buffer_t buf[RT_MAX_DEVS];
    struct ggml_tensor ** k;
    struct ggml_tensor ** v;
    enum ggml_type type_k, type_v; /* ggml's types, block types included (quantized cache) */
    /* Quantized rows are stored Hadamard-rotated, as llama.cpp stores them: one dim's outlier is
     * spread over a block, so the blocks' scales fit. 0 or the block (ggml_rerope.h, k_hadamard);
     * the graph rotates K and V before they are written and the attention output after it. */
    int32_t k_hadamard, v_hadamard;
    struct ggml_tensor * hk[RT_MAX_DEVS]; /* F32 {k_hadamard, k_hadamard} on each device with layers */
    struct ggml_tensor * hv[RT_MAX_DEVS]; /* F32 {v_hadamard, v_hadamard} */
    int32_t n_ctx;
    int32_t n_layer;
} rt_kv_cache;

/* The cache rows one sequence's part of a batch touches. A sequence owns rows kv_base .. kv_base + n_ctx_seq - 1;
 * the batch attends over its first n_past + n_new and writes n_new of them from n_past on. */
typedef struct rt_kv_span {
    int32_t seq;     /* sequence id                                  */
    int32_t kv_base; /* its first cache row                          */
    int32_t n_past;  /* its rows before this batch                   */
    int32_t n_new;   /* its tokens in this batch (consecutive rows)  */
    int32_t tok0;    /* index of its first token among the batch's   */
} rt_kv_span;

/* Cache rows the span's attention reads: those before it and its own. */
static inline int32_t rt_span_n_kv(const rt_kv_span * s) { return s->n_past + s->n_new; }

/* First checks the memory plan of a context of n_ctx rows and n_batch tokens on every GPU (its KV rows
 * and compute estimate; printed with GGML_REROPE_VERBOSE), then allocates each device's layers' rows.
 * `rotate`: store quantized rows Hadamard-rotated (llama.cpp's rule, kv_cache.c); off for readers that cannot
 * undo it (ggml's own flash attention, the debug path). */
ggml_rerope_status rt_kv_init(rt_kv_cache * kv, const ggml_rerope_model * m, int32_t n_ctx, int32_t n_batch,
                              enum ggml_type type_k, enum ggml_type type_v, bool rotate);
void rt_kv_free(rt_kv_cache * kv);
/* Bytes of every buffer of the cache. */
size_t rt_kv_bytes(const rt_kv_cache * kv);
size_t rt_kv_bytes_per_token(const ggml_rerope_model_info * info, enum ggml_type type_k, enum ggml_type type_v);
/* Drops cache rows p0 .. p1-1 of every layer's K and V: rows p1 .. n_used-1 move down to p0.
 * Rows hold raw keys, so a moved row needs no re-rotation (its position is its new index). */
ggml_rerope_status rt_kv_remove_rows(rt_kv_cache * kv, int32_t p0, int32_t p1, int32_t n_used);
/* Bytes of one layer's K plus V rows 0..n_rows-1 (each contiguous: the row index is outermost). */
size_t rt_kv_rows_bytes(const rt_kv_cache * kv, int32_t n_rows);
/* Copies rows 0..n_rows-1 of every layer out of / into the cache (CPU or GPU buffer), layer by layer,
 * K then V: n_layer * rt_kv_rows_bytes(kv, n_rows) bytes. n_rows <= n_ctx is the caller's check. */
void rt_kv_get_rows(const rt_kv_cache * kv, int32_t n_rows, void * dst);
void rt_kv_set_rows(rt_kv_cache * kv, int32_t n_rows, const void * src);

#endif
