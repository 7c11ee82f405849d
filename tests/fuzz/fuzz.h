/* GGUF loader fuzzer: shared types. A case is fully determined by (kind, run seed, case index):
 * the mutant is generated in the child from those, so any case can be replayed exactly. */
#ifndef REROPE_FUZZ_H
#define REROPE_FUZZ_H

#include "ggml.h"
#include "gguf.h"

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- deterministic random numbers */
typedef struct fuzz_rng {
    uint64_t s;
} fuzz_rng;

static inline uint64_t rng_next(fuzz_rng * r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in 0..n-1 (n >= 1). */
static inline uint64_t rng_below(fuzz_rng * r, uint64_t n) { return n ? rng_next(r) % n : 0; }
static inline int rng_chance(fuzz_rng * r, int percent) { return (int) rng_below(r, 100) < percent; }
static inline fuzz_rng rng_for_case(uint64_t run_seed, int kind, uint64_t index) {
    fuzz_rng r = {run_seed * 0x100000001B3ull ^ ((uint64_t) kind << 56) ^ index};
    rng_next(&r);
    return r;
}

/* ---------------------------------------------------------------- a growable byte buffer */
typedef struct fuzz_buf {
    uint8_t * data;
    size_t size, cap;
} fuzz_buf;

int buf_reserve(fuzz_buf * b, size_t cap); /* 0 on success */
void buf_free(fuzz_buf * b);

/* ---------------------------------------------------------------- the seed files */
/* Where the integers of a valid GGUF's header lie, for byte mutants that hit them on purpose. */
typedef enum field_kind {
    F_VERSION,
    F_N_TENSORS,
    F_N_KV,
    F_KEY_LEN,
    F_VALUE_TYPE,
    F_STR_LEN,
    F_ARR_TYPE,
    F_ARR_LEN,
    F_INT_VALUE,
    F_FLOAT_VALUE,
    F_N_DIMS,
    F_DIM,
    F_TENSOR_TYPE,
    F_TENSOR_OFFSET,
    F_KIND_COUNT
} field_kind;

typedef struct fuzz_field {
    uint32_t offset;
    uint8_t width; /* bytes: 1, 2, 4 or 8 */
    uint8_t kind;  /* field_kind */
} fuzz_field;

typedef struct fuzz_seed {
    char * path;
    uint8_t * bytes;
    size_t size;
    size_t header_end; /* start of the tensor data */
    fuzz_field * fields;
    int n_fields;
    /* semantic mutants start from the parsed file, tensor data included */
    struct gguf_context * gguf;
    struct ggml_context * data;
    int n_layer;
    char arch[32];
} fuzz_seed;

/* Reads and parses a VALID seed (0 on success; prints why not). */
int seed_load(fuzz_seed * s, const char * path);
void seed_free(fuzz_seed * s);

/* ---------------------------------------------------------------- mutants */
/* Byte-level: bit flips, byte runs, interesting integers in the header's fields, truncation,
 * repeated or deleted slices. out receives the mutant. */
int mutate_bytes(const fuzz_seed * seed, fuzz_rng * r, fuzz_buf * out);
/* Semantic: a well-formed GGUF (written by ggml's gguf writer) whose metadata values or types,
 * tensor shapes, types, data or presence lie. Appends a one-line description to note. */
int mutate_semantic(const fuzz_seed * seed, fuzz_rng * r, fuzz_buf * out, char * note, size_t note_size);

/* ---------------------------------------------------------------- one case, in the child */
typedef enum case_stage { STAGE_GENERATE = 0, STAGE_LOAD, STAGE_CONTEXT, STAGE_EVAL, STAGE_DONE } case_stage;

/* What the child leaves for the parent (shared memory) besides its exit status. */
typedef struct case_report {
    volatile int32_t stage;
    int32_t status;
    char message[240];
    char note[120];
} case_report;

/* Exit codes of a child; anything else (or a signal) is a crash. */
enum {
    EXIT_CASE_OK = 0,
    EXIT_CASE_ERROR = 40,     /* a clean error: status + message */
    EXIT_CASE_BAD_ERROR = 50, /* failed without a message, or with an unexpected status */
    EXIT_CASE_HARNESS = 51    /* the generator itself failed */
};

/* Loads path, makes a small context and evaluates a few tokens; returns an EXIT_CASE_* code. */
int run_model_file(const char * path, int use_mmap, case_report * rep);

#endif
