/* Byte-level mutants of a valid GGUF: 1 to 4 operations, most of them aimed at the header (key
 * values and tensor infos, where the parser and the loader make decisions), some anywhere. */
#include "fuzz.h"

#include <string.h>

static const uint64_t INTERESTING[] = {
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    33,
    63,
    64,
    100,
    127,
    128,
    255,
    256,
    257,
    1000,
    1024,
    4095,
    4096,
    65535,
    65536,
    0x7fffffffull,
    0x80000000ull,
    0xfffffffeull,
    0xffffffffull,
    0x100000000ull,
    0x7fffffffffffffffull,
    0x8000000000000000ull,
    0xfffffffffffffffeull,
    0xffffffffffffffffull,
};

/* float32 bit patterns: NaN, +-inf, 0, -0, denormal, huge, 1, -1, 0.5 */
static const uint32_t INTERESTING_F32[] = {0x7fc00000u, 0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u,
                                           0x00000001u, 0x7f7fffffu, 0x3f800000u, 0xbf800000u, 0x3f000000u};

/* A position: 85% inside the header (where the structure is), else anywhere. */
static size_t pick_pos(const fuzz_seed * s, fuzz_rng * r, size_t size) {
    if (size == 0) return 0;
    size_t lim = size;
    if (rng_chance(r, 85) && s->header_end > 0 && s->header_end < size) lim = s->header_end;
    return (size_t) rng_below(r, lim);
}

static void put_int(uint8_t * p, int width, uint64_t v) { memcpy(p, &v, (size_t) width); }

static uint64_t get_int(const uint8_t * p, int width) {
    uint64_t v = 0;
    memcpy(&v, p, (size_t) width);
    return v;
}

/* A new value for an integer field: an interesting constant, or the old one moved a little. */
static uint64_t field_value(fuzz_rng * r, uint64_t old, size_t file_size, size_t header_end) {
    switch (rng_below(r, 6)) {
        case 0: return old + 1 + rng_below(r, 4);
        case 1: return old - 1 - rng_below(r, 4);
        case 2: return old * 2;
        case 3: return old / 2;
        case 4: return rng_chance(r, 50) ? file_size + rng_below(r, 3) - 1 : header_end + rng_below(r, 3) - 1;
        default: return INTERESTING[rng_below(r, sizeof(INTERESTING) / sizeof(INTERESTING[0]))];
    }
}

/* Fields whose new value keeps the file parseable more often than not: what the loader decides on. */
static int is_value_field(const fuzz_field * f) {
    return f->kind == F_INT_VALUE || f->kind == F_FLOAT_VALUE || f->kind == F_DIM || f->kind == F_TENSOR_TYPE ||
           f->kind == F_VALUE_TYPE || f->kind == F_ARR_LEN;
}

static void op_field(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    if (s->n_fields == 0) return;
    const fuzz_field * f = &s->fields[rng_below(r, (uint64_t) s->n_fields)];
    for (int tries = 0; tries < 16 && rng_chance(r, 60) && !is_value_field(f); tries++)
        f = &s->fields[rng_below(r, (uint64_t) s->n_fields)];
    if ((size_t) f->offset + f->width > b->size) return;
    uint8_t * p = b->data + f->offset;
    if (f->kind == F_FLOAT_VALUE && f->width == 4 && rng_chance(r, 70)) {
        put_int(p, 4, INTERESTING_F32[rng_below(r, sizeof(INTERESTING_F32) / sizeof(INTERESTING_F32[0]))]);
        return;
    }
    if (f->kind == F_VALUE_TYPE || f->kind == F_ARR_TYPE) { /* another gguf type, or garbage */
        put_int(p, f->width, rng_chance(r, 80) ? rng_below(r, 14) : field_value(r, get_int(p, f->width), 0, 0));
        return;
    }
    if (f->kind == F_TENSOR_TYPE) { /* another ggml type, or garbage */
        put_int(p, f->width, rng_chance(r, 80) ? rng_below(r, GGML_TYPE_COUNT + 2) : field_value(r, 0, 0, 0));
        return;
    }
    put_int(p, f->width, field_value(r, get_int(p, f->width), b->size, s->header_end));
}

static void op_bitflip(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    const int n = 1 + (int) rng_below(r, 4);
    for (int i = 0; i < n && b->size; i++) b->data[pick_pos(s, r, b->size)] ^= (uint8_t) (1u << rng_below(r, 8));
}

static void op_byte_run(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    if (!b->size) return;
    static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x20};
    const size_t at = pick_pos(s, r, b->size);
    size_t len = rng_chance(r, 50) ? 1 : 1 + (size_t) rng_below(r, 32);
    if (len > b->size - at) len = b->size - at;
    const int random = rng_chance(r, 40);
    const uint8_t v = vals[rng_below(r, sizeof(vals))];
    for (size_t i = 0; i < len; i++) b->data[at + i] = random ? (uint8_t) rng_next(r) : v;
}

static void op_truncate(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    if (!b->size) return;
    b->size = rng_chance(r, 60) ? pick_pos(s, r, b->size) : (size_t) rng_below(r, b->size);
}

/* Copies a slice somewhere else: inserted (the file grows, everything after moves) or overwriting. */
static void op_repeat(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    if (b->size < 2) return;
    const size_t from = pick_pos(s, r, b->size);
    size_t len = 1 + (size_t) rng_below(r, rng_chance(r, 70) ? 32 : 512);
    if (len > b->size - from) len = b->size - from;
    const size_t to = pick_pos(s, r, b->size);
    uint8_t tmp[512];
    memcpy(tmp, b->data + from, len);
    if (rng_chance(r, 50)) {
        if (buf_reserve(b, b->size + len)) return;
        memmove(b->data + to + len, b->data + to, b->size - to);
        memcpy(b->data + to, tmp, len);
        b->size += len;
    } else {
        if (len > b->size - to) len = b->size - to;
        memcpy(b->data + to, tmp, len);
    }
}

static void op_delete(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    if (b->size < 2) return;
    const size_t at = pick_pos(s, r, b->size);
    size_t len = 1 + (size_t) rng_below(r, 64);
    if (len > b->size - at) len = b->size - at;
    memmove(b->data + at, b->data + at + len, b->size - at - len);
    b->size -= len;
}

static void op_insert(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * b) {
    const size_t at = pick_pos(s, r, b->size);
    const size_t len = 1 + (size_t) rng_below(r, 16);
    if (buf_reserve(b, b->size + len)) return;
    memmove(b->data + at + len, b->data + at, b->size - at);
    for (size_t i = 0; i < len; i++) b->data[at + i] = (uint8_t) rng_next(r);
    b->size += len;
}

int mutate_bytes(const fuzz_seed * s, fuzz_rng * r, fuzz_buf * out) {
    if (buf_reserve(out, s->size + 4096)) return -1;
    memcpy(out->data, s->bytes, s->size);
    out->size = s->size;
    const int n_ops = 1 + (int) rng_below(r, rng_chance(r, 60) ? 1 : 4);
    for (int i = 0; i < n_ops; i++) {
        const uint64_t op = rng_below(r, 100);
        if (op < 35) op_field(s, r, out);
        else if (op < 55) op_bitflip(s, r, out);
        else if (op < 70) op_byte_run(s, r, out);
        else if (op < 78) op_truncate(s, r, out);
        else if (op < 88) op_repeat(s, r, out);
        else if (op < 94) op_delete(s, r, out);
        else op_insert(s, r, out);
    }
    return 0;
}
