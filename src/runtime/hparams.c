/* Hyperparameters from the GGUF metadata, per architecture (keys as llama.cpp writes them). */
#include "errors.h"
#include "rt_file.h"
#include "rt_hparams.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct arch_desc {
    const char * name;
    rt_arch arch;
    int32_t rope_mode;
} arch_desc;

static const arch_desc ARCHS[] = {
    {"llama", RT_ARCH_LLAMA, GGML_REROPE_MODE_NORM},
    {"qwen2", RT_ARCH_QWEN2, GGML_REROPE_MODE_NEOX},
    {"qwen3", RT_ARCH_QWEN3, GGML_REROPE_MODE_NEOX},
};

/* Reads an integer key of any integer type (or the first element of an integer array, which some
 * converters write for per-layer values; those must then be equal for every layer). */
static int get_int(const rt_file * f, const char * key, int64_t * out, bool * found) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return 0;
    enum gguf_type t = gguf_get_kv_type(f->gguf, id);
    const void * data = NULL;
    size_t n = 1;
    if (t == GGUF_TYPE_ARRAY) {
        t = gguf_get_arr_type(f->gguf, id);
        n = gguf_get_arr_n(f->gguf, id);
        if (n == 0) return -1;
        data = gguf_get_arr_data(f->gguf, id);
    } else {
        data = gguf_get_val_data(f->gguf, id);
    }
    int64_t first = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t v;
        switch (t) {
            case GGUF_TYPE_UINT8: v = ((const uint8_t *) data)[i]; break;
            case GGUF_TYPE_INT8: v = ((const int8_t *) data)[i]; break;
            case GGUF_TYPE_UINT16: v = ((const uint16_t *) data)[i]; break;
            case GGUF_TYPE_INT16: v = ((const int16_t *) data)[i]; break;
            case GGUF_TYPE_UINT32: v = ((const uint32_t *) data)[i]; break;
            case GGUF_TYPE_INT32: v = ((const int32_t *) data)[i]; break;
            case GGUF_TYPE_UINT64: v = (int64_t) ((const uint64_t *) data)[i]; break;
            case GGUF_TYPE_INT64: v = ((const int64_t *) data)[i]; break;
            default: return -1;
        }
        if (i == 0) first = v;
        else if (v != first) return -2;
    }
    *out = first;
    *found = true;
    return 0;
}

static int get_float(const rt_file * f, const char * key, double * out, bool * found) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return 0;
    switch (gguf_get_kv_type(f->gguf, id)) {
        case GGUF_TYPE_FLOAT32: *out = gguf_get_val_f32(f->gguf, id); break;
        case GGUF_TYPE_FLOAT64: *out = gguf_get_val_f64(f->gguf, id); break;
        default: return -1;
    }
    *found = true;
    return 0;
}

/* Reads {arch}.{suffix} as an int32 in [lo, hi]; missing keys take `def` when def >= 0, else fail. */
static ggml_rerope_status read_int(const rt_file * f, const char * arch, const char * suffix, int64_t def, int64_t lo,
                                   int64_t hi, int32_t * out) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int64_t v = 0;
    bool found = false;
    int r = get_int(f, key, &v, &found);
    if (r == -1) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is not an integer", f->path, key);
    if (r == -2)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: metadata key %s differs between layers (unsupported)",
                           f->path, key);
    if (!found) {
        if (def < 0) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is missing", f->path, key);
        v = def;
    }
    if (v < lo || v > hi)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s = %lld is out of range %lld..%lld", f->path, key,
                           (long long) v, (long long) lo, (long long) hi);
    *out = (int32_t) v;
    return GGML_REROPE_OK;
}

static ggml_rerope_status read_float(const rt_file * f, const char * arch, const char * suffix, double def, float * out) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    double v = def;
    bool found = false;
    if (get_float(f, key, &v, &found) != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is not a float", f->path, key);
    if (!found && def < 0) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is missing", f->path, key);
    if (!found) v = def;
    if (!(v > 0) || !isfinite(v))
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s = %g must be a finite number > 0", f->path, key, v);
    *out = (float) v;
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_hparams_load(const rt_file * f, ggml_rerope_model_info * info, rt_hparams * hp) {
    memset(info, 0, sizeof(*info));
    memset(hp, 0, sizeof(*hp));
    const int64_t id = gguf_find_key(f->gguf, "general.architecture");
    if (id < 0 || gguf_get_kv_type(f->gguf, id) != GGUF_TYPE_STRING)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key general.architecture is missing", f->path);
    const char * arch = gguf_get_val_str(f->gguf, id);
    const arch_desc * desc = NULL;
    for (size_t i = 0; i < sizeof(ARCHS) / sizeof(ARCHS[0]); i++)
        if (strcmp(arch, ARCHS[i].name) == 0) desc = &ARCHS[i];
    if (!desc)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "%s: unsupported architecture '%s' (supported: llama, qwen2, qwen3)", f->path, arch);
    snprintf(info->architecture, sizeof(info->architecture), "%s", arch);
    hp->arch = desc->arch;
    info->rope_mode = desc->rope_mode;

    ggml_rerope_status s;
    const int64_t BIG = 1 << 30;
    if ((s = read_int(f, arch, "context_length", -1, 1, INT32_MAX, &info->n_ctx_train))) return s;
    if ((s = read_int(f, arch, "embedding_length", -1, 1, BIG, &info->n_embd))) return s;
    if ((s = read_int(f, arch, "block_count", -1, 1, 100000, &info->n_layer))) return s;
    if ((s = read_int(f, arch, "feed_forward_length", -1, 1, BIG, &hp->n_ff))) return s;
    if ((s = read_int(f, arch, "attention.head_count", -1, 1, 100000, &info->n_head))) return s;
    if ((s = read_int(f, arch, "attention.head_count_kv", info->n_head, 1, info->n_head, &info->n_head_kv))) return s;
    if (info->n_head % info->n_head_kv != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: head_count %d is not a multiple of head_count_kv %d", f->path,
                           info->n_head, info->n_head_kv);
    if ((s = read_int(f, arch, "attention.key_length", info->n_embd / info->n_head, 1, 100000, &info->head_dim)))
        return s;
    int32_t v_len = 0;
    if ((s = read_int(f, arch, "attention.value_length", info->head_dim, 1, 100000, &v_len))) return s;
    if (v_len != info->head_dim)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: value_length %d != key_length %d is not supported", f->path,
                           v_len, info->head_dim);
    if (info->head_dim > 256)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: head size %d is above the operator's limit 256", f->path,
                           info->head_dim);
    if ((s = read_int(f, arch, "rope.dimension_count", info->head_dim, 0, info->head_dim, &info->n_rot))) return s;
    if (info->n_rot % 2 != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: rope.dimension_count %d must be even", f->path, info->n_rot);
    if ((s = read_float(f, arch, "rope.freq_base", 10000.0, &info->rope_base))) return s;
    if ((s = read_float(f, arch, "attention.layer_norm_rms_epsilon", -1.0, &info->norm_eps))) return s;
    return GGML_REROPE_OK;
}
