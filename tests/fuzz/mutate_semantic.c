/* Semantic mutants: well-formed GGUFs (written by ggml's own gguf writer, so the container is
 * valid) whose content lies: metadata values out of range, keys of the wrong type (scalar or
 * array), keys removed or added, tensors of the wrong shape or type, tensors missing, extra
 * (layers past block_count, rotary factors, MoE), renamed or holding NaN / garbage data.
 * Each case applies 1 to 3 such lies to one seed and notes them for the crash log. */
#define _GNU_SOURCE /* open_memstream */
#include "fuzz.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TENSORS 256
#define MAX_BLOBS 16
#define MAX_NEW_BYTES (8u << 20) /* new tensor data per case */

typedef struct sem {
    const fuzz_seed * seed;
    fuzz_rng * r;
    struct gguf_context * out;
    struct ggml_context * meta; /* headers of new tensors (no data) */
    struct ggml_tensor * t[MAX_TENSORS];
    int n;
    void * blobs[MAX_BLOBS];
    int n_blobs;
    size_t new_bytes;
    char * note;
    size_t note_size;
} sem;

static void note(sem * S, const char * fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(sem * S, const char * fmt, ...) {
    const size_t len = strlen(S->note);
    if (len + 2 >= S->note_size) return;
    va_list ap;
    va_start(ap, fmt);
    if (len) strcat(S->note, "; ");
    vsnprintf(S->note + strlen(S->note), S->note_size - strlen(S->note), fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- keys */
static const char * const ARCH_KEYS[] = {
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "rope.dimension_count",
    "rope.freq_base",
    "attention.layer_norm_rms_epsilon",
    "vocab_size",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    "rope.scaling.yarn_ext_factor",
    "rope.scaling.yarn_attn_factor",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "rope.scaling.yarn_log_multiplier",
};
#define N_ARCH_KEYS ((int) (sizeof(ARCH_KEYS) / sizeof(ARCH_KEYS[0])))

typedef enum key_class { K_INT, K_FLOAT, K_STRING, K_ARCH, K_TOKENS, K_ALIGNMENT } key_class;

static key_class class_of(const char * key) {
    if (strcmp(key, "general.architecture") == 0) return K_ARCH;
    if (strcmp(key, "tokenizer.ggml.tokens") == 0) return K_TOKENS;
    if (strcmp(key, "general.alignment") == 0) return K_ALIGNMENT;
    if (strstr(key, "scaling.type")) return K_STRING;
    if (strstr(key, "freq_base") || strstr(key, "epsilon") || strstr(key, "factor") || strstr(key, "scale_linear") ||
        strstr(key, "beta_") || strstr(key, "multiplier"))
        return K_FLOAT;
    return K_INT;
}

/* A key to lie about: mostly the architecture's, sometimes a general or tokenizer one. */
static void pick_key(sem * S, char * key, size_t n) {
    const uint64_t c = rng_below(S->r, 100);
    if (c < 6) snprintf(key, n, "general.architecture");
    else if (c < 10) snprintf(key, n, "tokenizer.ggml.tokens");
    else if (c < 13) snprintf(key, n, "general.alignment");
    else if (c < 16 && gguf_get_n_kv(S->out) > 0) /* any key of the file */
        snprintf(key, n, "%s", gguf_get_key(S->out, (int64_t) rng_below(S->r, (uint64_t) gguf_get_n_kv(S->out))));
    else snprintf(key, n, "%s.%s", S->seed->arch, ARCH_KEYS[rng_below(S->r, N_ARCH_KEYS)]);
}

static int64_t seed_int(const sem * S, const char * suffix, int64_t def) {
    char key[96];
    snprintf(key, sizeof(key), "%s.%s", S->seed->arch, suffix);
    const int64_t id = gguf_find_key(S->seed->gguf, key);
    if (id < 0 || gguf_get_kv_type(S->seed->gguf, id) != GGUF_TYPE_UINT32) return def;
    return gguf_get_val_u32(S->seed->gguf, id);
}

static int64_t interesting_int(sem * S) {
    const int64_t nl = S->seed->n_layer, n_embd = seed_int(S, "embedding_length", 64);
    const int64_t hd = seed_int(S, "attention.key_length", 32);
    const int64_t vals[] = {0,          1,         2,      3,          -1,         -2,
                            nl - 1,     nl + 1,    nl * 2, n_embd - 1, n_embd + 1, n_embd * 2,
                            n_embd / 2, hd - 1,    hd + 1, hd * 2,     hd / 2,     7,
                            255,        257,       1000,   65536,      INT32_MAX,  (int64_t) INT32_MAX + 1,
                            INT64_MAX,  INT64_MIN, 4096,   100000};
    return vals[rng_below(S->r, sizeof(vals) / sizeof(vals[0]))];
}

static double interesting_float(sem * S) {
    const double vals[] = {NAN,  INFINITY, -INFINITY, 0.0, -0.0, 1.4e-45, 1e-30,  1e-12, 1e-6,   0.5,      1.0,
                           -1.0, 2.0,      10000.0,   1e6, 1e12, 1.1e12,  3.4e38, 1e300, -1e300, 0.999999, 32.0};
    return vals[rng_below(S->r, sizeof(vals) / sizeof(vals[0]))];
}

static void set_int_as(sem * S, const char * key, int64_t v, enum gguf_type t) {
    struct gguf_context * o = S->out;
    switch (t) {
        case GGUF_TYPE_UINT8: gguf_set_val_u8(o, key, (uint8_t) v); break;
        case GGUF_TYPE_INT8: gguf_set_val_i8(o, key, (int8_t) v); break;
        case GGUF_TYPE_UINT16: gguf_set_val_u16(o, key, (uint16_t) v); break;
        case GGUF_TYPE_INT16: gguf_set_val_i16(o, key, (int16_t) v); break;
        case GGUF_TYPE_INT32: gguf_set_val_i32(o, key, (int32_t) v); break;
        case GGUF_TYPE_UINT64: gguf_set_val_u64(o, key, (uint64_t) v); break;
        case GGUF_TYPE_INT64: gguf_set_val_i64(o, key, v); break;
        default: gguf_set_val_u32(o, key, (uint32_t) v); break;
    }
}

static const char * interesting_string(sem * S, key_class c) {
    static const char * const archs[] = {
        "llama", "qwen2", "qwen3",     "gptneox",
        "",      "LLAMA", "llama\x01", "a-very-long-architecture-name-that-does-not-fit-anywhere-at-all"};
    static const char * const types[] = {
        "none", "linear", "yarn", "longrope", "", "bogus", "yarn-but-with-a-name-longer-than-sixteen"};
    if (c == K_ARCH) return archs[rng_below(S->r, sizeof(archs) / sizeof(archs[0]))];
    return types[rng_below(S->r, sizeof(types) / sizeof(types[0]))];
}

static void set_tokens(sem * S, int64_t n) {
    if (n < 0 || n > 4096) n = 1;
    const char ** toks = malloc(sizeof(char *) * (size_t) (n ? n : 1));
    if (!toks) return;
    for (int64_t i = 0; i < n; i++) toks[i] = "t";
    gguf_set_arr_str(S->out, "tokenizer.ggml.tokens", toks, (size_t) n);
    free(toks);
}

/* The right type, a wrong value. */
static void lie_value(sem * S) {
    char key[128];
    pick_key(S, key, sizeof(key));
    const key_class c = class_of(key);
    const int64_t id = gguf_find_key(S->out, key);
    switch (c) {
        case K_INT: {
            const int64_t v = interesting_int(S);
            enum gguf_type t = id >= 0 ? gguf_get_kv_type(S->out, id) : GGUF_TYPE_UINT32;
            if (t == GGUF_TYPE_ARRAY || t == GGUF_TYPE_STRING || t == GGUF_TYPE_BOOL || t == GGUF_TYPE_FLOAT32 ||
                t == GGUF_TYPE_FLOAT64)
                t = GGUF_TYPE_UINT32;
            if (rng_chance(S->r, 20)) t = (enum gguf_type)(rng_chance(S->r, 50) ? GGUF_TYPE_INT64 : GGUF_TYPE_INT32);
            set_int_as(S, key, v, t);
            note(S, "%s=%lld", key, (long long) v);
            break;
        }
        case K_FLOAT: {
            const double v = interesting_float(S);
            if (rng_chance(S->r, 25)) gguf_set_val_f64(S->out, key, v);
            else gguf_set_val_f32(S->out, key, (float) v);
            note(S, "%s=%g", key, v);
            break;
        }
        case K_STRING:
        case K_ARCH: {
            const char * v = interesting_string(S, c);
            gguf_set_val_str(S->out, key, v);
            note(S, "%s='%s'", key, v);
            break;
        }
        case K_TOKENS: {
            const int64_t emb = gguf_find_tensor(S->seed->gguf, "token_embd.weight");
            const int64_t nv = emb >= 0 ? gguf_get_tensor_ne(S->seed->gguf, emb)[1] : 300;
            const int64_t off = rng_chance(S->r, 50) ? 1 : -1;
            const int64_t n = rng_chance(S->r, 50) ? nv + off : (int64_t) rng_below(S->r, 3);
            set_tokens(S, n);
            note(S, "tokens[%lld]", (long long) n);
            break;
        }
        case K_ALIGNMENT: { /* ggml's writer takes only a power of two: other values come from byte mutants */
            const uint32_t v = 1u << rng_below(S->r, 13);
            gguf_set_val_u32(S->out, key, v);
            note(S, "alignment=%u", v);
            break;
        }
    }
}

/* A wrong type: any scalar type, or an array (of ints, floats, strings, bools) of a telling length. */
static void lie_type(sem * S) {
    char key[128];
    pick_key(S, key, sizeof(key));
    if (class_of(key) == K_ALIGNMENT) return; /* ggml's writer aborts on anything but uint32 */
    struct gguf_context * o = S->out;
    const uint64_t t = rng_below(S->r, 18);
    const size_t lens[] = {0, 1, 2, (size_t) S->seed->n_layer, (size_t) S->seed->n_layer + 1, 3};
    const size_t n = lens[rng_below(S->r, sizeof(lens) / sizeof(lens[0]))];
    const int vary = rng_chance(S->r, 30);
    switch (t) {
        case 0: gguf_set_val_str(o, key, rng_chance(S->r, 50) ? "4" : "four"); break;
        case 1: gguf_set_val_bool(o, key, true); break;
        case 2: gguf_set_val_u8(o, key, 4); break;
        case 3: gguf_set_val_i8(o, key, -1); break;
        case 4: gguf_set_val_u16(o, key, 64); break;
        case 5: gguf_set_val_i16(o, key, -64); break;
        case 6: gguf_set_val_u32(o, key, 2); break;
        case 7: gguf_set_val_i32(o, key, -5); break;
        case 8: gguf_set_val_u64(o, key, UINT64_MAX); break;
        case 9: gguf_set_val_i64(o, key, INT64_MIN); break;
        case 10: gguf_set_val_f32(o, key, 64.0f); break;
        case 11: gguf_set_val_f64(o, key, 1e5); break;
        case 12:
        case 13: {
            uint32_t v[64];
            for (size_t i = 0; i < 64; i++) v[i] = vary ? (uint32_t) (2 + i) : 2u;
            gguf_set_arr_data(o, key, t == 12 ? GGUF_TYPE_UINT32 : GGUF_TYPE_INT32, v, n);
            break;
        }
        case 14: {
            int8_t v[64];
            for (size_t i = 0; i < 64; i++) v[i] = (int8_t) (vary ? i : 1);
            gguf_set_arr_data(o, key, GGUF_TYPE_INT8, v, n);
            break;
        }
        case 15: {
            float v[64];
            for (size_t i = 0; i < 64; i++) v[i] = 1.0f + (vary ? (float) i : 0.0f);
            gguf_set_arr_data(o, key, GGUF_TYPE_FLOAT32, v, n);
            break;
        }
        case 16: {
            const char * v[64];
            for (size_t i = 0; i < 64; i++) v[i] = "x";
            gguf_set_arr_str(o, key, v, n);
            break;
        }
        default: {
            uint64_t v[64];
            for (size_t i = 0; i < 64; i++) v[i] = vary ? i : UINT64_MAX;
            gguf_set_arr_data(o, key, GGUF_TYPE_UINT64, v, n);
            break;
        }
    }
    note(S, "%s as type#%d[%zu]", key, (int) t, n);
}

static void remove_key(sem * S) {
    char key[128];
    pick_key(S, key, sizeof(key));
    gguf_remove_key(S->out, key);
    note(S, "-%s", key);
}

/* ---------------------------------------------------------------- tensors */
static void * new_blob(sem * S, size_t n) {
    if (S->n_blobs == MAX_BLOBS || S->new_bytes + n > MAX_NEW_BYTES) return NULL;
    void * p = malloc(n ? n : 1);
    if (!p) return NULL;
    S->blobs[S->n_blobs++] = p;
    S->new_bytes += n;
    return p;
}

static void fill_random(sem * S, void * p, size_t n) {
    uint8_t * b = p;
    for (size_t i = 0; i < n; i += 8) {
        const uint64_t v = rng_next(S->r);
        memcpy(b + i, &v, n - i < 8 ? n - i : 8);
    }
}

/* Element i of a float tensor whose values are all of one kind, for rope factors and norms. */
static float poison_value(int kind, size_t i) {
    switch (kind) {
        case 0: return NAN;
        case 1: return INFINITY;
        case 2: return 0.0f;
        case 3: return -1.0f;
        case 4: return 1.4e-45f;
        case 5: return 3.4e38f;
        case 6: return i % 3 ? 1.0f : NAN; /* one bad value among good ones */
        default: return 1.0f + (float) (i % 7);
    }
}

/* A header for a tensor of that type and shape, with fresh data (random, or poisoned floats). */
static struct ggml_tensor * make_tensor(sem * S, const char * name, enum ggml_type type, const int64_t ne[4],
                                        int poison) {
    const int64_t blck = ggml_blck_size(type);
    if (blck <= 0 || ggml_type_size(type) == 0 || ne[0] % blck != 0) return NULL;
    for (int i = 0; i < 4; i++)
        if (ne[i] < 0 || ne[i] > (1 << 20)) return NULL;
    const double elems = (double) ne[0] * (double) ne[1] * (double) ne[2] * (double) ne[3];
    if (elems * ggml_type_size(type) / blck > MAX_NEW_BYTES) return NULL;
    struct ggml_tensor * t = ggml_new_tensor(S->meta, type, 4, ne);
    if (!t) return NULL;
    ggml_set_name(t, name);
    const size_t nb = ggml_nbytes(t);
    t->data = new_blob(S, nb);
    if (!t->data) return NULL;
    if (type == GGML_TYPE_F32 && poison) {
        const int kind = (int) rng_below(S->r, 9);
        for (size_t i = 0; i < nb / 4; i++) ((float *) t->data)[i] = poison_value(kind, i);
    } else if (type == GGML_TYPE_F32 && !rng_chance(S->r, 20)) {
        for (size_t i = 0; i < nb / 4; i++) ((float *) t->data)[i] = 1.0f + 0.01f * (float) (i % 13);
    } else {
        fill_random(S, t->data, nb);
    }
    return t;
}

static int find(const sem * S, const char * name) {
    for (int i = 0; i < S->n; i++)
        if (strcmp(ggml_get_name(S->t[i]), name) == 0) return i;
    return -1;
}

static enum ggml_type random_type(sem * S) {
    for (;;) {
        const enum ggml_type t = (enum ggml_type) rng_below(S->r, GGML_TYPE_COUNT);
        if (ggml_blck_size(t) > 0 && ggml_type_size(t) > 0) return t;
    }
}

static void lie_shape(sem * S) {
    if (!S->n) return;
    const int i = (int) rng_below(S->r, (uint64_t) S->n);
    const struct ggml_tensor * old = S->t[i];
    int64_t ne[4] = {old->ne[0], old->ne[1], old->ne[2], old->ne[3]};
    const int64_t blck = ggml_blck_size(old->type);
    switch (rng_below(S->r, 9)) {
        case 0: ne[0] += blck; break;
        case 1: ne[0] = ne[0] > blck ? ne[0] - blck : 0; break;
        case 2: ne[1] += 1; break;
        case 3: ne[1] = ne[1] > 1 ? ne[1] - 1 : 0; break;
        case 4: { /* swap the first two dims, when the row stays a whole number of blocks */
            const int64_t a = ne[0];
            ne[0] = ne[1];
            ne[1] = a;
            break;
        }
        case 5: ne[2] = 2; break;
        case 6: ne[3] = 3; break;
        case 7: ne[1] *= 2; break;
        default: ne[0] = 0; break;
    }
    struct ggml_tensor * t = make_tensor(S, ggml_get_name(old), old->type, ne, 0);
    if (!t) return;
    S->t[i] = t;
    note(S, "%s shape [%lld,%lld,%lld,%lld]", ggml_get_name(t), (long long) ne[0], (long long) ne[1], (long long) ne[2],
         (long long) ne[3]);
}

static void lie_tensor_type(sem * S) {
    if (!S->n) return;
    const int i = (int) rng_below(S->r, (uint64_t) S->n);
    const struct ggml_tensor * old = S->t[i];
    const enum ggml_type type = random_type(S);
    int64_t ne[4] = {old->ne[0], old->ne[1], old->ne[2], old->ne[3]};
    const int64_t blck = ggml_blck_size(type);
    if (ne[0] % blck) ne[0] = rng_chance(S->r, 50) ? (ne[0] / blck + 1) * blck : blck; /* a row of whole blocks */
    struct ggml_tensor * t = make_tensor(S, ggml_get_name(old), type, ne, 0);
    if (!t) return;
    S->t[i] = t;
    note(S, "%s type %s", ggml_get_name(t), ggml_type_name(type));
}

static void remove_tensor(sem * S) {
    if (!S->n) return;
    const int i = (int) rng_below(S->r, (uint64_t) S->n);
    note(S, "-%s", ggml_get_name(S->t[i]));
    S->t[i] = S->t[--S->n];
}

static void add_tensor(sem * S, struct ggml_tensor * t) {
    if (t && S->n < MAX_TENSORS && find(S, ggml_get_name(t)) < 0) {
        S->t[S->n++] = t;
        note(S, "+%s %s [%lld,%lld]", ggml_get_name(t), ggml_type_name(t->type), (long long) t->ne[0],
             (long long) t->ne[1]);
    }
}

/* A rotary factor tensor of a telling length, type and values. */
static void add_rope_factors(sem * S) {
    static const char * const names[] = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"};
    const char * name = names[rng_below(S->r, 3)];
    const int64_t half = seed_int(S, "rope.dimension_count", seed_int(S, "attention.key_length", 32)) / 2;
    const int64_t lens[] = {half, half, half, half + 1, half - 1, 1, 0, 2 * half};
    int64_t ne[4] = {lens[rng_below(S->r, sizeof(lens) / sizeof(lens[0]))], 1, 1, 1};
    if (rng_chance(S->r, 10)) ne[1] = 2;
    static const enum ggml_type types[] = {GGML_TYPE_F32,  GGML_TYPE_F32, GGML_TYPE_F16,
                                           GGML_TYPE_BF16, GGML_TYPE_I32, GGML_TYPE_Q8_0};
    const enum ggml_type type = types[rng_below(S->r, sizeof(types) / sizeof(types[0]))];
    const int i = find(S, name);
    if (i >= 0) S->t[i] = S->t[--S->n]; /* replaced */
    add_tensor(S, make_tensor(S, name, type, ne, rng_chance(S->r, 50)));
}

/* A layer tensor past block_count (a copy of layer 0's), an MoE router, or an unknown name. */
static void add_extra(sem * S) {
    char name[GGML_MAX_NAME];
    const uint64_t c = rng_below(S->r, 10);
    if (c < 6) {
        const int i = (int) rng_below(S->r, (uint64_t) (S->n ? S->n : 1));
        if (!S->n || strncmp(ggml_get_name(S->t[i]), "blk.0.", 6) != 0) return;
        const int layers[] = {S->seed->n_layer, S->seed->n_layer + 1, 999, -1};
        snprintf(name, sizeof(name), "blk.%d.%s", layers[rng_below(S->r, 4)], ggml_get_name(S->t[i]) + 6);
        struct ggml_tensor * t = ggml_dup_tensor(S->meta, S->t[i]);
        if (!t) return;
        ggml_set_name(t, name);
        t->data = S->t[i]->data;
        add_tensor(S, t);
    } else {
        const int64_t ne[4] = {64, 4, 1, 1};
        add_tensor(S, make_tensor(S, c < 8 ? "blk.0.ffn_gate_inp.weight" : "mystery.weight", GGML_TYPE_F32, ne, 0));
    }
}

/* Two tensors trade names (the loader then meets the wrong shapes or types under right names). */
static void swap_names(sem * S) {
    if (S->n < 2) return;
    const int a = (int) rng_below(S->r, (uint64_t) S->n), b = (int) rng_below(S->r, (uint64_t) S->n);
    if (a == b) return;
    struct ggml_tensor *ta = ggml_dup_tensor(S->meta, S->t[a]), *tb = ggml_dup_tensor(S->meta, S->t[b]);
    if (!ta || !tb) return;
    ggml_set_name(ta, ggml_get_name(S->t[b]));
    ggml_set_name(tb, ggml_get_name(S->t[a]));
    ta->data = S->t[a]->data;
    tb->data = S->t[b]->data;
    note(S, "swap %s %s", ggml_get_name(S->t[a]), ggml_get_name(S->t[b]));
    S->t[a] = ta;
    S->t[b] = tb;
}

/* NaN, inf or garbage in a tensor's data (same shape and type). */
static void poison_data(sem * S) {
    if (!S->n) return;
    const int i = (int) rng_below(S->r, (uint64_t) S->n);
    const struct ggml_tensor * old = S->t[i];
    int64_t ne[4] = {old->ne[0], old->ne[1], old->ne[2], old->ne[3]};
    struct ggml_tensor * t = make_tensor(S, ggml_get_name(old), old->type, ne, 1);
    if (!t) return;
    S->t[i] = t;
    note(S, "%s data poisoned", ggml_get_name(t));
}

/* ---------------------------------------------------------------- the case */
static int write_out(sem * S, fuzz_buf * out) {
    static uint8_t empty_data[1];
    for (int i = 0; i < S->n; i++) {
        if (gguf_find_tensor(S->out, ggml_get_name(S->t[i])) >= 0) continue; /* the writer aborts on duplicates */
        if (!S->t[i]->data) S->t[i]->data = empty_data;
        gguf_add_tensor(S->out, S->t[i]);
    }
    char * mem = NULL;
    size_t size = 0;
    FILE * fp = open_memstream(&mem, &size);
    if (!fp) return -1;
    const bool ok = gguf_write_to_file_ptr(S->out, fp, false);
    fclose(fp);
    if (!ok || buf_reserve(out, size + 1)) {
        free(mem);
        return -1;
    }
    memcpy(out->data, mem, size);
    out->size = size;
    free(mem);
    return 0;
}

int mutate_semantic(const fuzz_seed * seed, fuzz_rng * r, fuzz_buf * out, char * note_buf, size_t note_size) {
    sem S = {.seed = seed, .r = r, .note = note_buf, .note_size = note_size};
    note_buf[0] = 0;
    struct ggml_init_params ip = {
        .mem_size = (MAX_TENSORS + 16) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    S.meta = ggml_init(ip);
    S.out = gguf_init_empty();
    if (!S.meta || !S.out) return -1;
    gguf_set_kv(S.out, seed->gguf);
    const int64_t n_tensors = gguf_get_n_tensors(seed->gguf);
    for (int64_t i = 0; i < n_tensors && S.n < MAX_TENSORS; i++) {
        struct ggml_tensor * t = ggml_get_tensor(seed->data, gguf_get_tensor_name(seed->gguf, i));
        if (t) S.t[S.n++] = t;
    }
    const int n_lies = 1 + (int) rng_below(r, rng_chance(r, 60) ? 1 : 3);
    for (int k = 0; k < n_lies; k++) {
        const uint64_t op = rng_below(r, 100);
        if (op < 22) lie_value(&S);
        else if (op < 40) lie_type(&S);
        else if (op < 47) remove_key(&S);
        else if (op < 59) lie_shape(&S);
        else if (op < 69) lie_tensor_type(&S);
        else if (op < 75) remove_tensor(&S);
        else if (op < 84) add_rope_factors(&S);
        else if (op < 90) add_extra(&S);
        else if (op < 94) swap_names(&S);
        else poison_data(&S);
    }
    if (rng_chance(r, 10)) /* the same lies in another tensor order */
        for (int i = S.n - 1; i > 0; i--) {
            const int j = (int) rng_below(r, (uint64_t) i + 1);
            struct ggml_tensor * t = S.t[i];
            S.t[i] = S.t[j];
            S.t[j] = t;
        }
    const int rc = write_out(&S, out);
    gguf_free(S.out);
    ggml_free(S.meta);
    for (int i = 0; i < S.n_blobs; i++) free(S.blobs[i]);
    return rc;
}
