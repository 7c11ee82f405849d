/* Hyperparameters from the GGUF metadata, per architecture (keys as llama.cpp writes them).
 * The file is untrusted: every key is read through gguf_meta.c (type checked) and every value is
 * range checked here, so that a lying header is a clear ERR_IO, never an abort or an overflow later. */
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

/* Upper bounds far beyond any real model, low enough that no product of them overflows. */
#define MAX_EMBD (1 << 20)
#define MAX_FF (1 << 24)
#define MAX_LAYERS 4096
#define MAX_HEADS 16384
#define MAX_HEAD_DIM 256 /* the operator's limit */
/* Below 1 the rotary frequencies base^(-2i/d) exceed one radian per position and, for tiny bases,
 * overflow to inf; far above 1e12 no rotation is left. */
#define MIN_ROPE_BASE 1.0
#define MAX_ROPE_BASE 1e12

/* Reads key as an integer in [lo, hi]: missing takes def when has_def, else fails.
 * per_layer > 0: an array of that many equal values is accepted too. */
static ggml_rerope_status read_int(const rt_file * f, const char * key, bool has_def, int64_t def, int64_t lo,
                                   int64_t hi, int64_t per_layer, int32_t * out) {
    int64_t v = 0;
    bool found = false;
    ggml_rerope_status s = rt_meta_int(f, key, per_layer, &found, &v);
    if (s) return s;
    if (!found) {
        if (!has_def) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is missing", f->path, key);
        v = def;
    }
    if (v < lo || v > hi)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s = %lld is out of range %lld..%lld", f->path, key,
                           (long long) v, (long long) lo, (long long) hi);
    *out = (int32_t) v;
    return GGML_REROPE_OK;
}

/* Reads key as a finite float in (lo, hi] (lo_open) or [lo, hi]; missing takes def when has_def. */
static ggml_rerope_status read_float(const rt_file * f, const char * key, bool has_def, double def, double lo,
                                     bool lo_open, double hi, bool * found, float * out) {
    double v = def;
    bool here = false;
    ggml_rerope_status s = rt_meta_float(f, key, &here, &v);
    if (s) return s;
    if (found) *found = here;
    if (!here) {
        if (!has_def) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s is missing", f->path, key);
        v = def;
    }
    const bool ok = isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
    if (!ok)
        return rerope_fail(GGML_REROPE_ERR_IO,
                           "%s: metadata %s = %g is out of range: must be a finite number in %c%g, %g]", f->path, key,
                           v, lo_open ? '(' : '[', lo, hi);
    *out = (float) v;
    return GGML_REROPE_OK;
}

static void arch_key(char * buf, size_t n, const char * arch, const char * suffix) {
    snprintf(buf, n, "%s.%s", arch, suffix);
}

ggml_rerope_status rt_hparams_load(const rt_file * f, ggml_rerope_model_info * info, rt_hparams * hp) {
    memset(info, 0, sizeof(*info));
    memset(hp, 0, sizeof(*hp));
    hp->n_vocab_meta = hp->n_tokens_meta = -1;
    const char * arch = NULL;
    bool found = false;
    ggml_rerope_status s = rt_meta_str(f, "general.architecture", &found, &arch);
    if (s) return s;
    if (!found) return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key general.architecture is missing", f->path);
    const arch_desc * desc = NULL;
    for (size_t i = 0; i < sizeof(ARCHS) / sizeof(ARCHS[0]); i++)
        if (strcmp(arch, ARCHS[i].name) == 0) desc = &ARCHS[i];
    if (!desc)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "%s: unsupported architecture '%.64s' (supported: llama, qwen2, qwen3)", f->path, arch);
    snprintf(info->architecture, sizeof(info->architecture), "%s", desc->name);
    arch = desc->name;
    hp->arch = desc->arch;
    info->rope_mode = desc->rope_mode;

    char key[96];
#define KEY(suffix) (arch_key(key, sizeof(key), arch, suffix), key)
    if ((s = read_int(f, KEY("context_length"), false, 0, 1, INT32_MAX, 0, &info->n_ctx_train))) return s;
    if ((s = read_int(f, KEY("embedding_length"), false, 0, 1, MAX_EMBD, 0, &info->n_embd))) return s;
    if ((s = read_int(f, KEY("block_count"), false, 0, 1, MAX_LAYERS, 0, &info->n_layer))) return s;
    const int64_t nl = info->n_layer;
    if ((s = read_int(f, KEY("feed_forward_length"), false, 0, 1, MAX_FF, nl, &hp->n_ff))) return s;
    if ((s = read_int(f, KEY("attention.head_count"), false, 0, 1, MAX_HEADS, nl, &info->n_head))) return s;
    if ((s = read_int(f, KEY("attention.head_count_kv"), true, info->n_head, 1, info->n_head, nl, &info->n_head_kv)))
        return s;
    if (info->n_head % info->n_head_kv != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: head_count %d is not a multiple of head_count_kv %d", f->path,
                           info->n_head, info->n_head_kv);

    /* The head size: key_length, else embedding_length / head_count, which must then divide. */
    int64_t key_len = 0;
    bool has_key_len = false;
    if ((s = rt_meta_int(f, KEY("attention.key_length"), 0, &has_key_len, &key_len))) return s;
    if (!has_key_len && info->n_embd % info->n_head != 0)
        return rerope_fail(GGML_REROPE_ERR_IO,
                           "%s: embedding_length %d is not a multiple of head_count %d (and %s.attention.key_length "
                           "is absent)",
                           f->path, info->n_embd, info->n_head, arch);
    if ((s = read_int(f, KEY("attention.key_length"), true, info->n_embd / info->n_head, 1, INT32_MAX, 0,
                      &info->head_dim)))
        return s;
    if (info->head_dim > MAX_HEAD_DIM)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: head size %d (%s) is above the operator's limit %d",
                           f->path, info->head_dim,
                           has_key_len ? "attention.key_length" : "embedding_length / head_count", MAX_HEAD_DIM);
    int32_t v_len = 0;
    if ((s = read_int(f, KEY("attention.value_length"), true, info->head_dim, 1, INT32_MAX, 0, &v_len))) return s;
    if (v_len != info->head_dim)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: value_length %d != key_length %d is not supported",
                           f->path, v_len, info->head_dim);
    if ((s = read_int(f, KEY("rope.dimension_count"), true, info->head_dim, 0, info->head_dim, 0, &info->n_rot)))
        return s;
    if (info->n_rot % 2 != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: rope.dimension_count %d must be even", f->path, info->n_rot);
    if ((s = read_float(f, KEY("rope.freq_base"), true, 10000.0, MIN_ROPE_BASE, false, MAX_ROPE_BASE, NULL,
                        &info->rope_base)))
        return s;
    if ((s = read_float(f, KEY("attention.layer_norm_rms_epsilon"), false, 0.0, 0.0, true, 1.0, NULL, &info->norm_eps)))
        return s;

    /* Vocabulary sizes the metadata claims; the weights check them against token_embd.weight. */
    int64_t n = 0;
    if ((s = rt_meta_int(f, KEY("vocab_size"), 0, &found, &n))) return s;
    if (found) hp->n_vocab_meta = n;
    if ((s = rt_meta_str_array_len(f, "tokenizer.ggml.tokens", &found, &n))) return s;
    if (found) hp->n_tokens_meta = n;
#undef KEY
    return GGML_REROPE_OK;
}

/* An optional rope scaling float: finite, in (lo, hi] or [lo, hi]. */
static ggml_rerope_status rope_float(const rt_file * f, const char * arch, const char * suffix, double lo, bool lo_open,
                                     float * out, int32_t * has) {
    char key[128];
    arch_key(key, sizeof(key), arch, suffix);
    bool found = false;
    float v = 0.0f;
    ggml_rerope_status s = read_float(f, key, true, lo_open ? lo + 1.0 : lo, lo, lo_open, 1e6, &found, &v);
    if (s) return s;
    *has = found;
    *out = found ? v : 0.0f;
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_rope_info_load(const rt_file * f, const ggml_rerope_model_info * info,
                                     ggml_rerope_rope_info * r) {
    memset(r, 0, sizeof(*r));
    const char * arch = info->architecture;
    r->n_factors = info->n_rot / 2;
    char key[128];
    ggml_rerope_status s;

    arch_key(key, sizeof(key), arch, "rope.scaling.type");
    const char * type = NULL;
    bool found = false;
    if ((s = rt_meta_str(f, key, &found, &type))) return s;
    if (found) {
        if (strlen(type) >= sizeof(r->scaling_type))
            return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s = '%.32s...' is longer than %zu characters",
                               f->path, key, type, sizeof(r->scaling_type) - 1);
        snprintf(r->scaling_type, sizeof(r->scaling_type), "%s", type);
    }

    if ((s = rope_float(f, arch, "rope.scaling.factor", 0.0, true, &r->scaling_factor, &r->has_scaling_factor)))
        return s;
    if (!r->has_scaling_factor &&
        (s = rope_float(f, arch, "rope.scale_linear", 0.0, true, &r->scaling_factor, &r->has_scaling_factor)))
        return s;

    arch_key(key, sizeof(key), arch, "rope.scaling.original_context_length");
    int64_t orig = 0;
    if ((s = rt_meta_int(f, key, 0, &found, &orig))) return s;
    if (found && (orig < 0 || orig > INT32_MAX))
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s = %lld is out of range 0..%d", f->path, key,
                           (long long) orig, INT32_MAX);
    r->has_scaling_orig_ctx = found;
    r->scaling_orig_ctx = found ? (int32_t) orig : 0;

    if ((s = rope_float(f, arch, "rope.scaling.attn_factor", 0.0, true, &r->scaling_attn_factor,
                        &r->has_scaling_attn_factor)))
        return s;
    if ((s = rope_float(f, arch, "rope.scaling.yarn_ext_factor", 0.0, false, &r->yarn_ext_factor,
                        &r->has_yarn_ext_factor)))
        return s;
    if ((s = rope_float(f, arch, "rope.scaling.yarn_attn_factor", 0.0, true, &r->yarn_attn_factor,
                        &r->has_yarn_attn_factor)))
        return s;
    if ((s = rope_float(f, arch, "rope.scaling.yarn_beta_fast", 0.0, false, &r->yarn_beta_fast,
                        &r->has_yarn_beta_fast)))
        return s;
    if ((s = rope_float(f, arch, "rope.scaling.yarn_beta_slow", 0.0, false, &r->yarn_beta_slow,
                        &r->has_yarn_beta_slow)))
        return s;
    if ((s = rope_float(f, arch, "rope.scaling.yarn_log_multiplier", 0.0, false, &r->yarn_log_multiplier,
                        &r->has_yarn_log_multiplier)))
        return s;
    return GGML_REROPE_OK;
}
