/* Typed reads of GGUF metadata. ggml's gguf accessors abort the process on a type mismatch
 * (gguf_get_val_u32 of a string key, gguf_get_arr_data of a scalar, ...), and a GGUF file is
 * untrusted input: every read here looks at the key's type first, and an array's element type
 * and length, and only then calls the accessor of exactly that type. */
#include "errors.h"
#include "rt_file.h"

#include <stdio.h>
#include <string.h>

static const char * type_name(enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: return "uint8";
        case GGUF_TYPE_INT8: return "int8";
        case GGUF_TYPE_UINT16: return "uint16";
        case GGUF_TYPE_INT16: return "int16";
        case GGUF_TYPE_UINT32: return "uint32";
        case GGUF_TYPE_INT32: return "int32";
        case GGUF_TYPE_FLOAT32: return "float32";
        case GGUF_TYPE_BOOL: return "bool";
        case GGUF_TYPE_STRING: return "string";
        case GGUF_TYPE_ARRAY: return "array";
        case GGUF_TYPE_UINT64: return "uint64";
        case GGUF_TYPE_INT64: return "int64";
        case GGUF_TYPE_FLOAT64: return "float64";
        default: return "unknown";
    }
}

/* "uint32", or "array of 3 string" */
static void describe(const struct gguf_context * g, int64_t id, char * buf, size_t n) {
    const enum gguf_type t = gguf_get_kv_type(g, id);
    if (t == GGUF_TYPE_ARRAY)
        snprintf(buf, n, "array of %zu %s", gguf_get_arr_n(g, id), type_name(gguf_get_arr_type(g, id)));
    else snprintf(buf, n, "%s", type_name(t));
}

static ggml_rerope_status wrong_type(const rt_file * f, const char * key, int64_t id, const char * expected) {
    char found[64];
    describe(f->gguf, id, found, sizeof(found));
    return rerope_fail(GGML_REROPE_ERR_IO, "%s: metadata key %s has type %s, expected %s", f->path, key, found,
                       expected);
}

/* Bytes of one integer of type t; 0 for a type that is no integer. */
static size_t int_width(enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8: return 1;
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32: return 4;
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64: return 8;
        default: return 0;
    }
}

static bool is_int_type(enum gguf_type t) { return int_width(t) != 0; }

/* Element i of an integer array of type t (memcpy: no alignment is assumed). A uint64 above
 * INT64_MAX saturates, so that range checks report it as too large. */
static int64_t int_element(const void * data, enum gguf_type t, size_t i) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
    } v;
    const size_t w = int_width(t);
    memcpy(&v, (const char *) data + w * i, w);
    switch (t) {
        case GGUF_TYPE_UINT8: return v.u8;
        case GGUF_TYPE_INT8: return v.i8;
        case GGUF_TYPE_UINT16: return v.u16;
        case GGUF_TYPE_INT16: return v.i16;
        case GGUF_TYPE_UINT32: return v.u32;
        case GGUF_TYPE_INT32: return v.i32;
        case GGUF_TYPE_UINT64: return v.u64 > INT64_MAX ? INT64_MAX : (int64_t) v.u64;
        case GGUF_TYPE_INT64: return v.i64;
        default: return 0;
    }
}

static int64_t int_scalar(const struct gguf_context * g, int64_t id, enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(g, id);
        case GGUF_TYPE_INT8: return gguf_get_val_i8(g, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(g, id);
        case GGUF_TYPE_INT16: return gguf_get_val_i16(g, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(g, id);
        case GGUF_TYPE_UINT64: {
            const uint64_t v = gguf_get_val_u64(g, id);
            return v > INT64_MAX ? INT64_MAX : (int64_t) v;
        }
        case GGUF_TYPE_INT64: return gguf_get_val_i64(g, id);
        default: return 0;
    }
}

ggml_rerope_status rt_meta_int(const rt_file * f, const char * key, int64_t per_layer, bool * found, int64_t * out) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return GGML_REROPE_OK;
    const char * expected =
        per_layer > 0 ? "an integer (uint32), or an array of one integer per layer" : "an integer (uint32)";
    const enum gguf_type t = gguf_get_kv_type(f->gguf, id);
    if (is_int_type(t)) {
        *out = int_scalar(f->gguf, id, t);
        *found = true;
        return GGML_REROPE_OK;
    }
    if (t != GGUF_TYPE_ARRAY || per_layer <= 0) return wrong_type(f, key, id, expected);
    const enum gguf_type et = gguf_get_arr_type(f->gguf, id);
    if (!is_int_type(et)) return wrong_type(f, key, id, expected);
    const size_t n = gguf_get_arr_n(f->gguf, id);
    if (n != (size_t) per_layer)
        return rerope_fail(GGML_REROPE_ERR_IO,
                           "%s: metadata key %s is an array of %zu values, expected one per layer (%lld)", f->path, key,
                           n, (long long) per_layer);
    const void * data = gguf_get_arr_data(f->gguf, id);
    const int64_t first = int_element(data, et, 0);
    for (size_t i = 1; i < n; i++) {
        const int64_t v = int_element(data, et, i);
        if (v != first)
            return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                               "%s: metadata key %s differs between layers (%lld in layer 0, %lld in layer %zu): "
                               "unsupported",
                               f->path, key, (long long) first, (long long) v, i);
    }
    *out = first;
    *found = true;
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_meta_float(const rt_file * f, const char * key, bool * found, double * out) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return GGML_REROPE_OK;
    switch (gguf_get_kv_type(f->gguf, id)) {
        case GGUF_TYPE_FLOAT32: *out = gguf_get_val_f32(f->gguf, id); break;
        case GGUF_TYPE_FLOAT64: *out = gguf_get_val_f64(f->gguf, id); break;
        default: return wrong_type(f, key, id, "a float (float32)");
    }
    *found = true;
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_meta_str(const rt_file * f, const char * key, bool * found, const char ** out) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return GGML_REROPE_OK;
    if (gguf_get_kv_type(f->gguf, id) != GGUF_TYPE_STRING) return wrong_type(f, key, id, "a string");
    *out = gguf_get_val_str(f->gguf, id);
    *found = true;
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_meta_str_array_len(const rt_file * f, const char * key, bool * found, int64_t * n) {
    *found = false;
    const int64_t id = gguf_find_key(f->gguf, key);
    if (id < 0) return GGML_REROPE_OK;
    if (gguf_get_kv_type(f->gguf, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(f->gguf, id) != GGUF_TYPE_STRING)
        return wrong_type(f, key, id, "an array of strings");
    *n = (int64_t) gguf_get_arr_n(f->gguf, id);
    *found = true;
    return GGML_REROPE_OK;
}
