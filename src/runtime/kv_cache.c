/* KV cache of raw (unrotated) keys and values: per layer K and V of {head_dim, n_head_kv, n_ctx}.
 * Bytes per token equal llama.cpp's for the same type: 2 * n_layer * n_head_kv * head_dim * size. */
#include "rt_errors.h"
#include "rt_kv.h"
#include "rt_memory.h"
#include "rt_place.h"
#include "rt_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of n elements of a type (block types: whole blocks; n is a multiple of the block size). */
static size_t type_bytes(enum ggml_type type, size_t n) {
    return ggml_type_size(type) * n / (size_t) ggml_blck_size(type);
}

size_t rt_kv_bytes_per_token(const ggml_rerope_model_info * info, enum ggml_type type_k, enum ggml_type type_v) {
    const size_t per_layer = (size_t) info->n_head_kv * (size_t) info->head_dim;
    return (size_t) info->n_layer * (type_bytes(type_k, per_layer) + type_bytes(type_v, per_layer));
}

/* llama.cpp's rule: a quantized type at head_dim % 64 == 0 is rotated; K by the largest power of two
 * dividing head_dim, V by blocks of 64. 0 where a type is not rotated. */
static void rotation_blocks(enum ggml_type type_k, enum ggml_type type_v, int32_t head_dim, int32_t * k_block,
                            int32_t * v_block) {
    int32_t kb = 64;
    while (head_dim % (2 * kb) == 0) kb *= 2;
    const bool fits = head_dim % 64 == 0;
    *k_block = fits && ggml_is_quantized(type_k) ? kb : 0;
    *v_block = fits && ggml_is_quantized(type_v) ? 64 : 0;
}

/* The orthonormal Walsh-Hadamard matrix of order n (a power of two), row-major: H_2n = [[H, H], [H, -H]]. */
static void fill_hadamard(float * h, int n) {
    h[0] = 1.0f / sqrtf((float) n);
    for (int s = 1; s < n; s *= 2)
        for (int i = 0; i < s; i++)
            for (int j = 0; j < s; j++) {
                const float x = h[i * n + j];
                h[i * n + j + s] = x;
                h[(i + s) * n + j] = x;
                h[(i + s) * n + j + s] = -x;
            }
}

/* Writes each device's Hadamard matrices into the cache's buffers. */
static ggml_rerope_status set_hadamard(rt_kv_cache * kv) {
    const int32_t n = kv->k_hadamard > kv->v_hadamard ? kv->k_hadamard : kv->v_hadamard;
    if (n == 0) return GGML_REROPE_OK;
    float * h = malloc(sizeof(float) * (size_t) n * (size_t) n);
    if (!h) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the Hadamard matrices");
    for (int pass = 0; pass < 2; pass++) {
        const int32_t b = pass == 0 ? kv->k_hadamard : kv->v_hadamard;
        if (b == 0) continue;
        fill_hadamard(h, b);
        for (int d = 0; d < RT_MAX_DEVS; d++) {
            struct ggml_tensor * t = pass == 0 ? kv->hk[d] : kv->hv[d];
            if (t) ggml_backend_tensor_set(t, h, 0, ggml_nbytes(t));
        }
    }
    free(h);
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_kv_init(rt_kv_cache * kv, const ggml_rerope_model * m, int32_t n_ctx, int32_t n_batch,
                              enum ggml_type type_k, enum ggml_type type_v, bool rotate) {
    memset(kv, 0, sizeof(*kv));
    rt_memory_plan plan; /* every GPU's share of this context, before anything of it is allocated */
    rt_plan_make(&m->place, &m->file, &m->info, &m->hp, n_ctx, n_batch, type_k, type_v, &plan);
    if (getenv("GGML_REROPE_VERBOSE")) rt_plan_print(&plan);
    ggml_rerope_status s = rt_plan_check(&plan, "the context", false);
    if (s) return s;
    const ggml_rerope_model_info * I = &m->info;
    const rt_placement * pl = &m->place;
    kv->type_k = type_k;
    kv->type_v = type_v;
    kv->n_ctx = n_ctx;
    kv->n_layer = I->n_layer;
    if (rotate) rotation_blocks(type_k, type_v, I->head_dim, &kv->k_hadamard, &kv->v_hadamard);

    /* host memory (the CPU's layers and the stand-ins') against MemAvailable, each GPU against its free */
    const size_t per_layer = rt_kv_bytes_per_token(I, type_k, type_v) / (size_t) (I->n_layer > 0 ? I->n_layer : 1);
    size_t need[RT_MAX_DEVS] = {0}, host = 0;
    for (int il = 0; il < I->n_layer; il++) need[pl->layer_dev[il]] += per_layer * (size_t) n_ctx;
    for (int d = 0; d < pl->n_dev; d++) {
        if (rt_place_gpu(pl, d)) continue;
        host += need[d];
        need[d] = 0;
    }
    need[0] = host;
    for (int d = 0; d < pl->n_dev; d++) {
        const size_t avail = rt_mem_available_on(rt_place_gpu(pl, d));
        if (need[d] && avail && need[d] > avail)
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY,
                               "n_ctx = %d needs a KV cache of %zu MiB, but only %zu MiB of %s memory are available",
                               n_ctx, need[d] >> 20, avail >> 20, d == 0 ? "host" : pl->name[d]);
    }

    kv->k = calloc((size_t) I->n_layer, sizeof(*kv->k));
    kv->v = calloc((size_t) I->n_layer, sizeof(*kv->v));
    if (!kv->k || !kv->v) {
        rt_kv_free(kv);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the KV cache tensors");
    }
    for (int d = 0; d < pl->n_dev; d++) {
        struct ggml_init_params ip = {
            .mem_size = (size_t) (2 * I->n_layer + 2) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
        kv->ctx[d] = ggml_init(ip);
        if (!kv->ctx[d]) {
            rt_kv_free(kv);
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the KV cache tensors");
        }
    }
    for (int il = 0; il < I->n_layer; il++) {
        struct ggml_context * c = kv->ctx[pl->layer_dev[il]];
        kv->k[il] = ggml_new_tensor_3d(c, type_k, I->head_dim, I->n_head_kv, n_ctx);
        kv->v[il] = ggml_new_tensor_3d(c, type_v, I->head_dim, I->n_head_kv, n_ctx);
        ggml_format_name(kv->k[il], "cache_k_l%d", il);
        ggml_format_name(kv->v[il], "cache_v_l%d", il);
        const int d = pl->layer_dev[il];
        if (kv->k_hadamard && !kv->hk[d])
            kv->hk[d] = ggml_new_tensor_2d(c, GGML_TYPE_F32, kv->k_hadamard, kv->k_hadamard);
        if (kv->v_hadamard && !kv->hv[d])
            kv->hv[d] = ggml_new_tensor_2d(c, GGML_TYPE_F32, kv->v_hadamard, kv->v_hadamard);
    }
    /* Not cleared: attention only reads rows that were written, and untouched pages stay unresident. */
    for (int d = 0; d < pl->n_dev; d++) {
        if (!ggml_get_first_tensor(kv->ctx[d])) continue;
        ggml_backend_dev_t gpu = rt_place_gpu(pl, d);
        kv->buf[d] = ggml_backend_alloc_ctx_tensors_from_buft(kv->ctx[d], gpu ? ggml_backend_dev_buffer_type(gpu)
                                                                              : ggml_backend_cpu_buffer_type());
        if (!kv->buf[d]) {
            rt_kv_free(kv);
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the KV cache of %s for n_ctx = %d",
                               pl->name[d], n_ctx);
        }
        ggml_backend_buffer_set_usage(kv->buf[d], GGML_BACKEND_BUFFER_USAGE_ANY);
    }
    const ggml_rerope_status hs = set_hadamard(kv);
    if (hs) rt_kv_free(kv);
    return hs;
}

size_t rt_kv_bytes(const rt_kv_cache * kv) {
    size_t n = 0;
    for (int d = 0; d < RT_MAX_DEVS; d++)
        if (kv->buf[d]) n += ggml_backend_buffer_get_size(kv->buf[d]);
    return n;
}

/* Moves rows [src, src + n) of t down to dst (dst < src) through a host buffer of whole rows, front to back:
 * each chunk is read before it is written, and no later chunk reads a row written before it. Tensor
 * get/set work on every backend's buffer (host or GPU). */
static void move_rows_down(struct ggml_tensor * t, int32_t dst, int32_t src, int32_t n, void * tmp, int32_t chunk) {
    const size_t row = t->nb[2];
    for (int32_t done = 0; done < n; done += chunk) {
        const int32_t c = n - done < chunk ? n - done : chunk;
        ggml_backend_tensor_get(t, tmp, (size_t) (src + done) * row, (size_t) c * row);
        ggml_backend_tensor_set(t, tmp, (size_t) (dst + done) * row, (size_t) c * row);
    }
}

ggml_rerope_status rt_kv_remove_rows(rt_kv_cache * kv, int32_t p0, int32_t p1, int32_t n_used) {
    if (p0 < 0 || p0 > p1 || p1 > n_used || n_used > kv->n_ctx)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "rows to remove must satisfy 0 <= p0 <= p1 <= %d, got %d..%d",
                           n_used, p0, p1);
    const int32_t n_move = n_used - p1;
    if (p0 == p1 || n_move == 0 || kv->n_layer == 0) return GGML_REROPE_OK;
    /* Bounded staging memory: at most 256 KiB of rows (and at least one row) at a time. */
    const size_t row = kv->k[0]->nb[2] > kv->v[0]->nb[2] ? kv->k[0]->nb[2] : kv->v[0]->nb[2]; /* the larger of K, V */
    int32_t chunk = (int32_t) ((size_t) (256 << 10) / row);
    if (chunk < 1) chunk = 1;
    if (chunk > n_move) chunk = n_move;
    void * tmp = malloc((size_t) chunk * row);
    if (!tmp) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for moving KV cache rows");
    for (int il = 0; il < kv->n_layer; il++) {
        move_rows_down(kv->k[il], p0, p1, n_move, tmp, chunk);
        move_rows_down(kv->v[il], p0, p1, n_move, tmp, chunk);
    }
    free(tmp);
    return GGML_REROPE_OK;
}

void rt_kv_free(rt_kv_cache * kv) {
    for (int d = 0; d < RT_MAX_DEVS; d++) {
        if (kv->buf[d]) ggml_backend_buffer_free(kv->buf[d]);
        if (kv->ctx[d]) ggml_free(kv->ctx[d]);
    }
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof(*kv));
}

size_t rt_kv_rows_bytes(const rt_kv_cache * kv, int32_t n_rows) {
    return kv->n_layer > 0 ? (kv->k[0]->nb[2] + kv->v[0]->nb[2]) * (size_t) n_rows : 0;
}

void rt_kv_get_rows(const rt_kv_cache * kv, int32_t n_rows, void * dst) {
    if (kv->n_layer == 0 || n_rows == 0) return;
    const size_t nk = kv->k[0]->nb[2] * (size_t) n_rows, nv = kv->v[0]->nb[2] * (size_t) n_rows;
    uint8_t * p = dst;
    for (int il = 0; il < kv->n_layer; il++) {
        ggml_backend_tensor_get(kv->k[il], p, 0, nk);
        ggml_backend_tensor_get(kv->v[il], p + nk, 0, nv);
        p += nk + nv;
    }
}

void rt_kv_set_rows(rt_kv_cache * kv, int32_t n_rows, const void * src) {
    if (kv->n_layer == 0 || n_rows == 0) return;
    const size_t nk = kv->k[0]->nb[2] * (size_t) n_rows, nv = kv->v[0]->nb[2] * (size_t) n_rows;
    const uint8_t * p = src;
    for (int il = 0; il < kv->n_layer; il++) {
        ggml_backend_tensor_set(kv->k[il], p, 0, nk);
        ggml_backend_tensor_set(kv->v[il], p + nk, 0, nv);
        p += nk + nv;
    }
}
