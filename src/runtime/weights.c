/* Weights into backend buffers, as llama.cpp places them on the CPU:
 *   - matmul weights into ggml-cpu's extra (repacked) buffer types where one supports that
 *     tensor's mul_mat (a trial op through the device's supports_op), the data copied in
 *     (the buffer repacks it on set_tensor);
 *   - everything else zero-copy from the file mapping (or a CPU buffer without mmap).
 * A layer placed on a GPU (m->place) has its tensors in that GPU's buffer, the head likewise; the
 * token embedding stays mapped and its rows are looked up on the CPU, as llama.cpp does. The memory
 * plan is checked once the tensors are known, before any buffer is allocated. */
#include "errors.h"
#include "ggml-cpu.h"
#include "rt_file.h"
#include "rt_memory.h"
#include "rt_model.h"
#include "rt_place.h"
#include "rt_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum w_kind { W_VEC, W_MATMUL, W_EMBD } w_kind;

typedef struct loader {
    ggml_rerope_model * m;
    ggml_backend_buffer_type_t extra[RT_MAX_BUFS - 1];
    int n_extra;
    bool use_mmap;
    int64_t * gguf_ids; /* per created tensor, in creation order: which gguf tensor feeds it */
    struct ggml_tensor ** created;
    int n_created;
} loader;

static void find_extra_bufts(loader * L) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(L->m->cpu_dev);
    typedef ggml_backend_buffer_type_t * (*get_extra_fn)(ggml_backend_dev_t);
    get_extra_fn fn = (get_extra_fn) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!fn) return;
    for (ggml_backend_buffer_type_t * p = fn(L->m->cpu_dev); p && *p && L->n_extra < RT_MAX_BUFS - 1; p++) {
        if (ggml_backend_dev_supports_buft(L->m->cpu_dev, *p)) L->extra[L->n_extra++] = *p;
    }
}

/* Does buft hold this weight for a mul_mat the CPU device computes? (llama.cpp's trial op) */
static bool buft_supports_matmul(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, enum ggml_type type,
                                 const int64_t * ne) {
    char mem[8 * 512];
    struct ggml_init_params ip = {.mem_size = 3 * ggml_tensor_overhead(), .mem_buffer = mem, .no_alloc = true};
    if (ip.mem_size > sizeof(mem)) return false;
    struct ggml_context * c = ggml_init(ip);
    if (!c) return false;
    struct ggml_tensor * w = ggml_new_tensor_2d(c, type, ne[0], ne[1]);
    struct ggml_tensor * x = ggml_new_tensor_2d(c, GGML_TYPE_F32, ne[0], 512);
    struct ggml_tensor * op = ggml_mul_mat(c, w, x);
    ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
    bool ok = false;
    if (dummy) {
        w->buffer = dummy;
        ok = ggml_backend_dev_supports_op(dev, op);
        w->buffer = NULL;
        ggml_backend_buffer_free(dummy);
    }
    ggml_free(c);
    return ok;
}

/* Index of the weight context for buft (0 = plain), creating it on first use. */
static int ctx_index(loader * L, ggml_backend_buffer_type_t buft) {
    ggml_rerope_model * m = L->m;
    for (int i = 0; i < m->n_ctx_w; i++)
        if (m->buft_w[i] == buft) return i;
    const size_t n = (size_t) gguf_get_n_tensors(m->file.gguf) + 4;
    struct ggml_init_params ip = {.mem_size = n * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    struct ggml_context * c = ggml_init(ip);
    if (!c) return -1;
    m->ctx_w[m->n_ctx_w] = c;
    m->buft_w[m->n_ctx_w] = buft;
    return m->n_ctx_w++;
}

/* Buffer type of a matmul weight on device d: a GPU's (which must multiply the type), else the first
 * repacking CPU buffer type that takes it, else NULL (plain: mmap or CPU). */
static ggml_rerope_status matmul_buft(const loader * L, int d, const char * name, enum ggml_type type,
                                      const int64_t * ne, ggml_backend_buffer_type_t * out) {
    const ggml_rerope_model * m = L->m;
    ggml_backend_dev_t gpu = rt_place_gpu(&m->place, d);
    *out = NULL;
    if (gpu) {
        *out = ggml_backend_dev_buffer_type(gpu);
        if (!buft_supports_matmul(gpu, *out, type, ne))
            return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which %s cannot multiply",
                               m->file.path, name, ggml_type_name(type), ggml_backend_dev_name(gpu));
        return GGML_REROPE_OK;
    }
    for (int i = 0; i < L->n_extra && !*out; i++)
        if (buft_supports_matmul(m->cpu_dev, L->extra[i], type, ne)) *out = L->extra[i];
    return GGML_REROPE_OK;
}

/* A tensor of device d (index into m->place). */
static ggml_rerope_status get_tensor(loader * L, int d, const char * name, w_kind kind, int64_t ne0, int64_t ne1,
                                     bool required, struct ggml_tensor ** out) {
    ggml_rerope_model * m = L->m;
    const rt_file * f = &m->file;
    *out = NULL;
    const int64_t id = gguf_find_tensor(f->gguf, name);
    if (id < 0) {
        if (!required) return GGML_REROPE_OK;
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor '%s' is missing", f->path, name);
    }
    const int64_t * ne = gguf_get_tensor_ne(f->gguf, id);
    const enum ggml_type type = gguf_get_tensor_type(f->gguf, id);
    if (ne[0] != ne0 || ne[1] != ne1 || ne[2] != 1 || ne[3] != 1)
        return rerope_fail(
            GGML_REROPE_ERR_IO,
            "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld] from the metadata", f->path,
            name, (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3], (long long) ne0,
            (long long) ne1);
    if (kind == W_VEC ? type != GGML_TYPE_F32 : !rt_type_is_matmul_weight(type))
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which is not supported here (%s)",
                           f->path, name, ggml_type_name(type),
                           kind == W_VEC ? "norm and bias vectors must be F32"
                                         : "weights must be a type ggml's CPU backend multiplies: F32, F16, BF16, "
                                           "Q4_0..Q8_0, K-quants, IQ types, TQ, MXFP4");

    ggml_backend_buffer_type_t buft = NULL; /* NULL: plain (mmap or CPU) */
    if (kind == W_MATMUL) {
        ggml_rerope_status s = matmul_buft(L, d, name, type, ne, &buft);
        if (s) return s;
    } else if (kind == W_VEC && rt_place_gpu(&m->place, d)) {
        buft = ggml_backend_dev_buffer_type(rt_place_gpu(&m->place, d));
    }
    const int ci = ctx_index(L, buft);
    if (ci < 0) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory creating a weight context");
    struct ggml_tensor * t = ggml_new_tensor(m->ctx_w[ci], type, 2, ne);
    ggml_set_name(t, name);
    L->gguf_ids[L->n_created] = id;
    L->created[L->n_created++] = t;
    *out = t;
    return GGML_REROPE_OK;
}

/* A tensor of layer N >= block_count means the metadata lies about the depth: refuse it rather
 * than run a model with layers silently missing. */
static ggml_rerope_status check_layer_indices(const ggml_rerope_model * m) {
    const int64_t n = gguf_get_n_tensors(m->file.gguf);
    for (int64_t i = 0; i < n; i++) {
        const char * name = gguf_get_tensor_name(m->file.gguf, i);
        if (strncmp(name, "blk.", 4) != 0) continue;
        char * end = NULL;
        const long il = strtol(name + 4, &end, 10);
        if (end == name + 4 || *end != '.') continue; /* not a layer tensor of ours */
        if (il < 0 || il >= m->info.n_layer)
            return rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor '%s' belongs to layer %ld, but block_count is %d",
                               m->file.path, name, il, m->info.n_layer);
    }
    return GGML_REROPE_OK;
}

static ggml_rerope_status create_tensors(loader * L) {
    ggml_rerope_model * m = L->m;
    const ggml_rerope_model_info * I = &m->info;
    const int64_t n_embd = I->n_embd, hd = I->head_dim, n_ff = m->hp.n_ff;
    const int64_t nq = (int64_t) I->n_head * hd, nkv = (int64_t) I->n_head_kv * hd;
    ggml_rerope_status s;

    /* The vocabulary size comes from the embedding itself. */
    const int64_t emb_id = gguf_find_tensor(m->file.gguf, "token_embd.weight");
    if (emb_id < 0) return rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor 'token_embd.weight' is missing", m->file.path);
    const int64_t n_vocab = gguf_get_tensor_ne(m->file.gguf, emb_id)[1];
    if (n_vocab < 1 || n_vocab > INT32_MAX)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: token_embd.weight has a bad vocabulary size", m->file.path);
    m->info.n_vocab = (int32_t) n_vocab;
    if (m->hp.n_vocab_meta >= 0 && m->hp.n_vocab_meta != n_vocab)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata %s.vocab_size = %lld but token_embd.weight has %lld rows",
                           m->file.path, I->architecture, (long long) m->hp.n_vocab_meta, (long long) n_vocab);
    if (m->hp.n_tokens_meta >= 0 && m->hp.n_tokens_meta != n_vocab)
        return rerope_fail(GGML_REROPE_ERR_IO,
                           "%s: tokenizer.ggml.tokens has %lld tokens but token_embd.weight has %lld rows",
                           m->file.path, (long long) m->hp.n_tokens_meta, (long long) n_vocab);
    if ((s = check_layer_indices(m))) return s;

    const int out_dev = m->place.output_dev;
    if ((s = get_tensor(L, 0, "token_embd.weight", W_EMBD, n_embd, n_vocab, true, &m->tok_embd))) return s;
    if ((s = get_tensor(L, out_dev, "output_norm.weight", W_VEC, n_embd, 1, true, &m->output_norm))) return s;
    if ((s = get_tensor(L, out_dev, "output.weight", W_MATMUL, n_embd, n_vocab, false, &m->output))) return s;
    if (!m->output) {
        /* Tied embeddings. As llama.cpp does, the head gets its own (repacked) copy when a repacking
         * buffer type takes it: get_rows needs the plain layout, the head's matmul wants the repacked one. */
        m->output = m->tok_embd;
        const enum ggml_type t = m->tok_embd->type;
        ggml_backend_buffer_type_t head = NULL; /* the GPU too gets its own copy: the embedding stays on the host */
        if ((s = matmul_buft(L, out_dev, "output.weight (tied)", t, m->tok_embd->ne, &head))) return s;
        if (head) {
            const int ci = ctx_index(L, head);
            if (ci < 0) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory creating a weight context");
            m->output = ggml_new_tensor(m->ctx_w[ci], t, 2, m->tok_embd->ne);
            ggml_set_name(m->output, "output.weight (tied)");
            L->gguf_ids[L->n_created] = emb_id;
            L->created[L->n_created++] = m->output;
        }
    }

    if (gguf_find_tensor(m->file.gguf, "blk.0.ffn_gate_inp.weight") >= 0)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s: mixture-of-experts models are not supported",
                           m->file.path);

    m->layers = calloc((size_t) I->n_layer, sizeof(rt_layer));
    if (!m->layers) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for %d layers", I->n_layer);
    char name[96];
#define T(field, suffix, kind, a, b, req)                                       \
    do {                                                                        \
        snprintf(name, sizeof(name), "blk.%d." suffix, il);                     \
        if ((s = get_tensor(L, d, name, kind, a, b, req, &l->field))) return s; \
    } while (0)
    const bool qk_norm = m->hp.arch == RT_ARCH_QWEN3;
    for (int il = 0; il < I->n_layer; il++) {
        rt_layer * l = &m->layers[il];
        const int d = m->place.layer_dev[il];
        T(attn_norm, "attn_norm.weight", W_VEC, n_embd, 1, true);
        T(wq, "attn_q.weight", W_MATMUL, n_embd, nq, true);
        T(wk, "attn_k.weight", W_MATMUL, n_embd, nkv, true);
        T(wv, "attn_v.weight", W_MATMUL, n_embd, nkv, true);
        T(wo, "attn_output.weight", W_MATMUL, nq, n_embd, true);
        T(bq, "attn_q.bias", W_VEC, nq, 1, m->hp.arch == RT_ARCH_QWEN2);
        T(bk, "attn_k.bias", W_VEC, nkv, 1, m->hp.arch == RT_ARCH_QWEN2);
        T(bv, "attn_v.bias", W_VEC, nkv, 1, m->hp.arch == RT_ARCH_QWEN2);
        T(q_norm, "attn_q_norm.weight", W_VEC, hd, 1, qk_norm);
        T(k_norm, "attn_k_norm.weight", W_VEC, hd, 1, qk_norm);
        T(ffn_norm, "ffn_norm.weight", W_VEC, n_embd, 1, true);
        T(ffn_gate, "ffn_gate.weight", W_MATMUL, n_embd, n_ff, true);
        T(ffn_up, "ffn_up.weight", W_MATMUL, n_embd, n_ff, true);
        T(ffn_down, "ffn_down.weight", W_MATMUL, n_ff, n_embd, true);
    }
#undef T
    return GGML_REROPE_OK;
}

static const char * const ROPE_FACTOR_NAMES[3] = {"rope_freqs.weight", "rope_factors_long.weight",
                                                  "rope_factors_short.weight"};

/* One rotary factor tensor (indexed as ggml_rerope_rope_factors), when present: F32, F16 or BF16
 * of exactly n_rot/2 values, each finite and > 0 with a finite inverse (ggml's rope divides by
 * them), kept as F32 in m->rope_factors[which]. */
static ggml_rerope_status load_rope_factor(ggml_rerope_model * m, int which) {
    const rt_file * f = &m->file;
    const char * name = ROPE_FACTOR_NAMES[which];
    const int64_t id = gguf_find_tensor(f->gguf, name);
    if (id < 0) return GGML_REROPE_OK;
    const int64_t * ne = gguf_get_tensor_ne(f->gguf, id);
    const enum ggml_type type = gguf_get_tensor_type(f->gguf, id);
    const int n = m->info.n_rot / 2;
    if (n < 1)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor '%s' is present but the model has no rotary dimensions",
                           f->path, name);
    if (type != GGML_TYPE_F32 && type != GGML_TYPE_F16 && type != GGML_TYPE_BF16)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor '%s' has type %s, expected F32 (or F16, BF16)", f->path,
                           name, ggml_type_name(type));
    if (ne[0] != n || ne[1] != 1 || ne[2] != 1 || ne[3] != 1)
        return rerope_fail(
            GGML_REROPE_ERR_IO, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected %d values (n_rot / 2)",
            f->path, name, (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3], n);
    float * v = malloc(sizeof(float) * (size_t) n);
    void * raw = malloc(ggml_type_size(type) * (size_t) n);
    if (!v || !raw) {
        free(v);
        free(raw);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for %s", name);
    }
    ggml_rerope_status s = rt_file_read_tensor(f, id, raw, ggml_type_size(type) * (size_t) n);
    if (!s) {
        if (type == GGML_TYPE_F32) memcpy(v, raw, sizeof(float) * (size_t) n);
        else if (type == GGML_TYPE_F16) ggml_fp16_to_fp32_row(raw, v, n);
        else ggml_bf16_to_fp32_row(raw, v, n);
        for (int i = 0; i < n && !s; i++)
            if (!(v[i] > 0.0f) || !isfinite(v[i]) || !isfinite(1.0f / v[i]))
                s = rerope_fail(GGML_REROPE_ERR_IO, "%s: %s[%d] = %g must be finite and > 0 (with a finite inverse)",
                                f->path, name, i, (double) v[i]);
    }
    free(raw);
    if (s) {
        free(v);
        return s;
    }
    m->rope_factors[which] = v;
    return GGML_REROPE_OK;
}

/* The rotary factor tensors; rope_freqs (divisors of theta) also as multipliers for the operator. */
static ggml_rerope_status load_rope_factors(ggml_rerope_model * m) {
    for (int i = 0; i < 3; i++) {
        ggml_rerope_status s = load_rope_factor(m, i);
        if (s) return s;
    }
    ggml_rerope_rope_info * r = &m->rope_info;
    r->has_rope_freqs = m->rope_factors[GGML_REROPE_FACTORS_ROPE_FREQS] != NULL;
    r->has_factors_long = m->rope_factors[GGML_REROPE_FACTORS_LONG] != NULL;
    r->has_factors_short = m->rope_factors[GGML_REROPE_FACTORS_SHORT] != NULL;
    if (!r->has_rope_freqs) return GGML_REROPE_OK;
    const int n = m->info.n_rot / 2;
    m->freq_factors = malloc(sizeof(float) * (size_t) n);
    if (!m->freq_factors) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for rope_freqs");
    for (int i = 0; i < n; i++) m->freq_factors[i] = 1.0f / m->rope_factors[GGML_REROPE_FACTORS_ROPE_FREQS][i];
    m->info.has_rope_freqs = 1;
    return GGML_REROPE_OK;
}

static int64_t gguf_id_of(const loader * L, const struct ggml_tensor * t) {
    for (int i = 0; i < L->n_created; i++)
        if (L->created[i] == t) return L->gguf_ids[i];
    return -1;
}

/* Allocates each weight context and fills it. */
static ggml_rerope_status allocate_and_fill(loader * L) {
    ggml_rerope_model * m = L->m;
    rt_file * f = &m->file;
    size_t copied = 0; /* host memory; the GPUs' shares were checked by the plan */
    for (int i = 0; i < m->n_ctx_w; i++) {
        bool host = true;
        for (int d = 1; d < m->place.n_dev; d++)
            if (rt_place_gpu(&m->place, d) && m->buft_w[i] == ggml_backend_dev_buffer_type(rt_place_gpu(&m->place, d)))
                host = false;
        if (host && (m->buft_w[i] || !L->use_mmap))
            for (struct ggml_tensor * t = ggml_get_first_tensor(m->ctx_w[i]); t;
                 t = ggml_get_next_tensor(m->ctx_w[i], t))
                copied += ggml_nbytes(t);
    }
    const size_t avail = rt_mem_available_on(NULL);
    if (avail && copied > avail)
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "%s: weights need %zu MiB of memory, %zu MiB available", f->path,
                           copied >> 20, avail >> 20);

    for (int i = 0; i < m->n_ctx_w; i++) {
        struct ggml_context * c = m->ctx_w[i];
        if (!ggml_get_first_tensor(c)) continue;
        if (!m->buft_w[i] && L->use_mmap) {
            /* Zero-copy: one buffer over the whole mapping, each tensor at its file offset. */
            ggml_backend_buffer_t b = ggml_backend_cpu_buffer_from_ptr(f->map, f->size);
            if (!b) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot wrap the file mapping in a ggml buffer");
            m->bufs[i] = b;
            ggml_backend_buffer_set_usage(b, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            for (struct ggml_tensor * t = ggml_get_first_tensor(c); t; t = ggml_get_next_tensor(c, t)) {
                void * addr = (void *) rt_file_tensor_ptr(f, gguf_id_of(L, t));
                if (ggml_backend_tensor_alloc(b, t, addr) != GGML_STATUS_SUCCESS)
                    return rerope_fail(GGML_REROPE_ERR_IO, "%s: cannot place tensor '%s'", f->path, ggml_get_name(t));
            }
            continue;
        }
        ggml_backend_buffer_type_t buft = m->buft_w[i] ? m->buft_w[i] : ggml_backend_cpu_buffer_type();
        ggml_backend_buffer_t b = ggml_backend_alloc_ctx_tensors_from_buft(c, buft);
        if (!b)
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "%s: cannot allocate the %s weight buffer", f->path,
                               ggml_backend_buft_name(buft));
        m->bufs[i] = b;
        ggml_backend_buffer_set_usage(b, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        void * tmp = NULL;
        size_t tmp_size = 0;
        for (struct ggml_tensor * t = ggml_get_first_tensor(c); t; t = ggml_get_next_tensor(c, t)) {
            const int64_t id = gguf_id_of(L, t);
            const size_t n = ggml_nbytes(t);
            const void * src = rt_file_tensor_ptr(f, id);
            if (!src) {
                if (n > tmp_size) {
                    void * p = realloc(tmp, n);
                    if (!p) {
                        free(tmp);
                        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory reading '%s'", ggml_get_name(t));
                    }
                    tmp = p;
                    tmp_size = n;
                }
                ggml_rerope_status s = rt_file_read_tensor(f, id, tmp, n);
                if (s) {
                    free(tmp);
                    return s;
                }
                src = tmp;
            }
            ggml_backend_tensor_set(t, src, 0, n); /* repacking buffers convert here */
            /* The copy is what computes from now on; unless the mmap buffer also uses these bytes
             * (tied embeddings), drop the mapped pages so they do not count twice in memory. */
            if (src != tmp && !(m->tok_embd && m->bufs[0] && ggml_get_data(m->tok_embd) == src))
                rt_file_release(f, src, n);
        }
        free(tmp);
    }
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_weights_load(ggml_rerope_model * m, bool use_mmap) {
    loader L = {.m = m, .use_mmap = use_mmap && m->file.map != NULL};
    const size_t n = (size_t) gguf_get_n_tensors(m->file.gguf) + 4;
    L.gguf_ids = malloc(n * sizeof(int64_t));
    L.created = malloc(n * sizeof(struct ggml_tensor *));
    if (!L.gguf_ids || !L.created) {
        free(L.gguf_ids);
        free(L.created);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory listing tensors");
    }
    find_extra_bufts(&L);
    ggml_rerope_status s =
        ctx_index(&L, NULL) == 0 ? GGML_REROPE_OK : rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory");
    if (!s) s = create_tensors(&L);
    if (!s) {
        rt_plan_make(&m->place, &m->file, &m->info, &m->hp, 0, 0, GGML_TYPE_F16, GGML_TYPE_F16, &m->plan);
        s = rt_plan_check(&m->plan, m->file.path, true);
    }
    if (!s) s = load_rope_factors(m);
    if (!s) s = allocate_and_fill(&L);
    if (!s) {
        for (int i = 0; i < L.n_created; i++) {
            if (L.created[i] == m->output && m->output != m->tok_embd && L.gguf_ids[i] == gguf_id_of(&L, m->tok_embd))
                continue; /* the tied head's repacked copy is not another parameter */
            m->info.n_params += ggml_nelements(L.created[i]);
            m->info.weight_bytes += (int64_t) ggml_nbytes(L.created[i]);
        }
    }
    if (!s && getenv("GGML_REROPE_VERBOSE")) {
        rt_plan_print(&m->plan);
        for (int i = 0; i < m->n_ctx_w; i++) {
            int count = 0;
            for (struct ggml_tensor * t = ggml_get_first_tensor(m->ctx_w[i]); t;
                 t = ggml_get_next_tensor(m->ctx_w[i], t))
                count++;
            fprintf(stderr, "ggml_rerope: %d weight tensors in %s (%.1f MiB)\n", count,
                    m->buft_w[i] ? ggml_backend_buft_name(m->buft_w[i]) : (L.use_mmap ? "mmap" : "CPU"),
                    m->bufs[i] ? ggml_backend_buffer_get_size(m->bufs[i]) / 1048576.0 : 0.0);
        }
    }
    free(L.gguf_ids);
    free(L.created);
    return s;
}

void rt_weights_free(ggml_rerope_model * m) {
    for (int i = 0; i < m->n_ctx_w; i++) {
        if (m->bufs[i]) ggml_backend_buffer_free(m->bufs[i]);
        if (m->ctx_w[i]) ggml_free(m->ctx_w[i]);
        m->bufs[i] = NULL;
        m->ctx_w[i] = NULL;
    }
    m->n_ctx_w = 0;
    free(m->layers);
    m->layers = NULL;
    free(m->freq_factors);
    m->freq_factors = NULL;
    for (int i = 0; i < 3; i++) {
        free(m->rope_factors[i]);
        m->rope_factors[i] = NULL;
    }
}
