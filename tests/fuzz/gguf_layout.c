/* Seed files: read the bytes, note where each integer of the header lies (counts, lengths, types,
 * dims, offsets, integer and float values), and parse the file with ggml for semantic mutants.
 * Seeds are valid files written by tests/fuzz/make_seeds.py: this parser trusts them. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int buf_reserve(fuzz_buf * b, size_t cap) {
    if (cap <= b->cap) return 0;
    uint8_t * p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

void buf_free(fuzz_buf * b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

typedef struct parser {
    const uint8_t * p;
    size_t size, pos;
    fuzz_seed * s;
    int cap;
    int ok;
} parser;

static void add_field(parser * P, size_t offset, int width, field_kind kind) {
    fuzz_seed * s = P->s;
    if (s->n_fields == P->cap) {
        P->cap = P->cap ? 2 * P->cap : 256;
        fuzz_field * f = realloc(s->fields, sizeof(*f) * (size_t) P->cap);
        if (!f) {
            P->ok = 0;
            return;
        }
        s->fields = f;
    }
    s->fields[s->n_fields++] = (fuzz_field){(uint32_t) offset, (uint8_t) width, (uint8_t) kind};
}

static uint64_t take(parser * P, int width, field_kind kind, int record) {
    if (!P->ok || P->pos + (size_t) width > P->size) {
        P->ok = 0;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, P->p + P->pos, (size_t) width); /* little endian, as GGUF */
    if (record) add_field(P, P->pos, width, kind);
    P->pos += (size_t) width;
    return v;
}

static void skip_string(parser * P, int record) {
    const uint64_t n = take(P, 8, F_STR_LEN, record);
    if (!P->ok || n > P->size - P->pos) {
        P->ok = 0;
        return;
    }
    P->pos += n;
}

static int scalar_width(uint32_t type) {
    switch (type) {
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
        case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

static void skip_value(parser * P, uint32_t type, int record) {
    if (type == GGUF_TYPE_STRING) {
        skip_string(P, record);
        return;
    }
    const int w = scalar_width(type);
    if (!w) {
        P->ok = 0;
        return;
    }
    const field_kind kind = type == GGUF_TYPE_FLOAT32 || type == GGUF_TYPE_FLOAT64 ? F_FLOAT_VALUE : F_INT_VALUE;
    take(P, w, kind, record);
}

static void parse(parser * P, size_t * alignment) {
    take(P, 4, F_VERSION, 0); /* magic */
    take(P, 4, F_VERSION, 1);
    const uint64_t n_tensors = take(P, 8, F_N_TENSORS, 1);
    const uint64_t n_kv = take(P, 8, F_N_KV, 1);
    for (uint64_t i = 0; P->ok && i < n_kv; i++) {
        const uint64_t key_len = take(P, 8, F_KEY_LEN, 1);
        const size_t key_at = P->pos;
        if (!P->ok || key_len > P->size - P->pos) {
            P->ok = 0;
            break;
        }
        P->pos += key_len;
        const int is_alignment = key_len == 17 && memcmp(P->p + key_at, "general.alignment", 17) == 0;
        const uint32_t type = (uint32_t) take(P, 4, F_VALUE_TYPE, 1);
        if (type == GGUF_TYPE_ARRAY) {
            const uint32_t et = (uint32_t) take(P, 4, F_ARR_TYPE, 1);
            const uint64_t n = take(P, 8, F_ARR_LEN, 1);
            for (uint64_t j = 0; P->ok && j < n; j++) skip_value(P, et, j < 4 || j + 1 == n);
        } else {
            if (is_alignment && type == GGUF_TYPE_UINT32 && P->pos + 4 <= P->size) {
                uint32_t a;
                memcpy(&a, P->p + P->pos, 4);
                *alignment = a;
            }
            skip_value(P, type, 1);
        }
    }
    for (uint64_t i = 0; P->ok && i < n_tensors; i++) {
        skip_string(P, 1);
        const uint32_t n_dims = (uint32_t) take(P, 4, F_N_DIMS, 1);
        for (uint32_t d = 0; P->ok && d < n_dims && d < 4; d++) take(P, 8, F_DIM, 1);
        take(P, 4, F_TENSOR_TYPE, 1);
        take(P, 8, F_TENSOR_OFFSET, 1);
    }
}

int seed_load(fuzz_seed * s, const char * path) {
    memset(s, 0, sizeof(*s));
    s->path = strdup(path);
    FILE * fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "fuzz: cannot open seed %s\n", path);
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    const long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    s->bytes = malloc(n > 0 ? (size_t) n : 1);
    s->size = n > 0 ? (size_t) n : 0;
    const size_t got = s->bytes ? fread(s->bytes, 1, s->size, fp) : 0;
    fclose(fp);
    if (got != s->size || s->size < 24) {
        fprintf(stderr, "fuzz: cannot read seed %s\n", path);
        return -1;
    }
    parser P = {.p = s->bytes, .size = s->size, .s = s, .ok = 1};
    size_t alignment = 32;
    parse(&P, &alignment);
    if (!P.ok || alignment == 0) {
        fprintf(stderr, "fuzz: seed %s is not a GGUF this parser reads\n", path);
        return -1;
    }
    s->header_end = (P.pos + alignment - 1) / alignment * alignment;
    if (s->header_end > s->size) s->header_end = s->size;

    struct gguf_init_params gp = {.no_alloc = false, .ctx = &s->data};
    s->gguf = gguf_init_from_file(path, gp);
    if (!s->gguf) {
        fprintf(stderr, "fuzz: ggml cannot read seed %s\n", path);
        return -1;
    }
    const int64_t arch_id = gguf_find_key(s->gguf, "general.architecture");
    if (arch_id < 0 || gguf_get_kv_type(s->gguf, arch_id) != GGUF_TYPE_STRING) {
        fprintf(stderr, "fuzz: seed %s has no general.architecture\n", path);
        return -1;
    }
    snprintf(s->arch, sizeof(s->arch), "%s", gguf_get_val_str(s->gguf, arch_id));
    char key[64];
    snprintf(key, sizeof(key), "%s.block_count", s->arch);
    const int64_t bc = gguf_find_key(s->gguf, key);
    s->n_layer = bc >= 0 && gguf_get_kv_type(s->gguf, bc) == GGUF_TYPE_UINT32 ? (int) gguf_get_val_u32(s->gguf, bc) : 1;
    return 0;
}

void seed_free(fuzz_seed * s) {
    if (s->gguf) gguf_free(s->gguf);
    if (s->data) ggml_free(s->data);
    free(s->path);
    free(s->bytes);
    free(s->fields);
    memset(s, 0, sizeof(*s));
}
