/*
 * ggml_rerope.h - fused ReRoPE / Leaky ReRoPE / Self-Extend / Dual Chunk attention.
 *
 * The math (the contract every kernel is tested against: this header, and its executable form in
 * ggml_rerope/reference.py):
 *
 *   head size d, rotary dims d_r <= d (even), base b,
 *   theta_m = freq_factors[m] * b^(-2m/d_r),  m = 0 .. d_r/2-1   (factor 1 when NULL)
 *   R_p x rotates each pair of x by angle p*theta_m; pairs are (2m, 2m+1) in NORM
 *   mode (GGUF llama) and (m, m + d_r/2) in NEOX mode (GGUF qwen2/qwen3);
 *   dims >= d_r are not rotated.
 *
 *   For a query at position i and a key at position j (j <= i when causal):
 *     rel(i,j) = i - j                         if i - j < w
 *              = w                             far, GGML_REROPE_FAR_CLAMP  (ReRoPE)
 *              = w + (i - j - w) / k           far, GGML_REROPE_FAR_LEAKY  (Leaky ReRoPE)
 *              = fl(i/G) - fl(j/G) + w - fl(w/G)  far, GGML_REROPE_FAR_GROUP (Self-Extend)
 *              = w - (j mod s)                 far, GGML_REROPE_FAR_CHUNK  (Dual Chunk Attention)
 *     "near" (rel = i - j) is i - j < w, except for FAR_CHUNK (chunks of s keys, w/2 < s <= w):
 *       i - j <= w - s, or fl(j/s) = fl(i/s) (same chunk), or fl(j/s) = fl(i/s) - 1 and
 *       (i mod s) + s <= w (the chunk before, where the true distance still fits in w)
 *     Keys can be dropped (weight 0, LM-Infinite's Lambda-shaped attention) with a sliding window:
 *       sliding_window > 0 drops key j when i - j >= sliding_window, unless j < sink_tokens
 *       (attention sinks: the first tokens stay visible, at their far distance rel(i, j))
 *     s_ij = lambda_i * scale * <R_rel(i,j) q_i, k_j>
 *     lambda_i = max(1, ln(i+1) / ln(L_train)) with log-n on (L_train > 1), else 1
 *     o_i = sum_j softmax_j(s_ij) v_j
 *
 * Keys and values are stored UNROTATED in the cache; kernels rotate key tiles as
 * they load them. Queries are also passed unrotated.
 *
 * Layouts (C order, contiguous):
 *   q   [n_q ][n_head   ][d]  float32
 *   k,v [n_kv][n_head_kv][d]  a ggml_rerope_kv_type each (f32, f16, bf16 or a ggml block
 *                             type; contiguous rows), n_head % n_head_kv == 0 (GQA)
 *   out [n_q ][n_head   ][d]  float32
 * In ggml terms these are tensors with ne = {d, n_head(_kv), n_q(n_kv)}.
 *
 * Errors: every entry returns a ggml_rerope_status (or NULL for tensor builders);
 * ggml_rerope_last_error() gives a message for the calling thread. Nothing aborts.
 */
#ifndef GGML_REROPE_H
#define GGML_REROPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(GGML_REROPE_BUILD)
#define GGML_REROPE_API __declspec(dllexport)
#elif defined(_WIN32)
#define GGML_REROPE_API __declspec(dllimport)
#else
#define GGML_REROPE_API __attribute__((visibility("default")))
#endif

struct ggml_context;
struct ggml_tensor;
struct ggml_cgraph;

/* Status codes. 0 is success; every other value comes with a message. */
typedef enum ggml_rerope_status {
    GGML_REROPE_OK = 0,
    GGML_REROPE_ERR_INVALID_ARG = 1, /* bad dims, null pointer, parameter out of range */
    GGML_REROPE_ERR_UNSUPPORTED = 2, /* tensor type or feature this build cannot run  */
    GGML_REROPE_ERR_NO_MEMORY = 3,   /* an allocation failed                          */
    GGML_REROPE_ERR_CUDA = 4,        /* a CUDA call failed or no device is present     */
    GGML_REROPE_ERR_IO = 5,          /* file missing, unreadable, corrupt or truncated */
    GGML_REROPE_ERR_CONTEXT_FULL = 6 /* runtime: more tokens than n_ctx                */
} ggml_rerope_status;

/* Rotary pair layout; values equal ggml's GGML_ROPE_TYPE_NORMAL / _NEOX. */
typedef enum ggml_rerope_rope_mode {
    GGML_REROPE_MODE_NORM = 0, /* pairs (2m, 2m+1)       */
    GGML_REROPE_MODE_NEOX = 2  /* pairs (m, m + d_r / 2) */
} ggml_rerope_rope_mode;

/* What happens to distances i - j >= window. */
typedef enum ggml_rerope_far_mode {
    GGML_REROPE_FAR_CLAMP = 0, /* ReRoPE: rel = w                             */
    GGML_REROPE_FAR_LEAKY = 1, /* Leaky ReRoPE: rel = w + (i - j - w) / k     */
    GGML_REROPE_FAR_GROUP = 2, /* Self-Extend: fl(i/G) - fl(j/G) + w - fl(w/G) */
    GGML_REROPE_FAR_CHUNK = 3  /* Dual Chunk Attention: w - (j mod s)            */
} ggml_rerope_far_mode;

/* Parameters of one attention call. Start from ggml_rerope_default_params(). */
typedef struct ggml_rerope_params {
    int32_t head_dim;           /* d: 1..256                                            */
    int32_t n_rot;              /* d_r: even, 0..d (0 = no rotation at all)            */
    int32_t rope_mode;          /* ggml_rerope_rope_mode                                */
    float rope_base;            /* b > 0                                                */
    const float * freq_factors; /* NULL, or n_rot/2 multipliers of theta_m (> 0). Note:
                                   ggml's rope and GGUF rope_freqs DIVIDE; pass 1/x.   */
    int32_t window;             /* w >= 1; w >= context length gives plain RoPE        */
    int32_t far_mode;           /* ggml_rerope_far_mode                                 */
    float leaky_k;              /* FAR_LEAKY slope divisor, >= 1 (k = 1 is plain RoPE) */
    int32_t group_size;         /* FAR_GROUP G >= 1                                      */
    int32_t logn_train_len;     /* L_train for log-n query scaling; 0 = off, else >= 2  */
    float scale;                /* score scale; 0 means 1/sqrt(d)                       */
    int32_t causal;             /* 1: key j used only when k_pos[j] <= q_pos[i]         */
    int32_t chunk_len;          /* FAR_CHUNK s: window / 2 < s <= window                 */
    int32_t sliding_window;     /* 0: every key counts; > 0: keys with i - j >= it drop */
    int32_t sink_tokens;        /* >= 0: keys at positions below it never drop          */
} ggml_rerope_params;

/* d = head_dim, n_rot = head_dim, NORM, base 10000, ReRoPE with window 1024,
 * no log-n, scale 1/sqrt(d), causal, no key dropped. */
GGML_REROPE_API ggml_rerope_params ggml_rerope_default_params(int32_t head_dim);

/* Checks params alone; returns the status and sets the message. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_check_params(const ggml_rerope_params * params);

/* Message of the last failed call on this thread ("" if none). */
GGML_REROPE_API const char * ggml_rerope_last_error(void);

/* Name of a status code, e.g. "invalid argument". */
GGML_REROPE_API const char * ggml_rerope_status_name(ggml_rerope_status status);

/* ------------------------------------------------------------------ raw buffers */

/* Key/value storage types; values equal ggml's GGML_TYPE_*, layouts are ggml's (ggml-common.h).
 * Block types hold 32 elements a block, so their rows need head_dim % 32 == 0. */
typedef enum ggml_rerope_kv_type {
    GGML_REROPE_KV_F32 = 0,
    GGML_REROPE_KV_F16 = 1,
    GGML_REROPE_KV_Q4_0 = 2,    /* {f16 d; u8 qs[16]}: x = d * (nibble - 8)       */
    GGML_REROPE_KV_Q4_1 = 3,    /* {f16 d, m; u8 qs[16]}: x = d * nibble + m       */
    GGML_REROPE_KV_Q5_0 = 6,    /* {f16 d; u8 qh[4]; u8 qs[16]}: x = d * (q5 - 16) */
    GGML_REROPE_KV_Q5_1 = 7,    /* {f16 d, m; u8 qh[4]; u8 qs[16]}: x = d * q5 + m */
    GGML_REROPE_KV_Q8_0 = 8,    /* {f16 d; i8 qs[32]}: x = d * q                   */
    GGML_REROPE_KV_IQ4_NL = 20, /* {f16 d; u8 qs[16]}: x = d * kvalues[nibble]     */
    GGML_REROPE_KV_BF16 = 30
} ggml_rerope_kv_type;

/* Bytes of one row of head_dim elements of `type` (0: type unknown, or head_dim not a whole
 * number of its blocks). */
GGML_REROPE_API size_t ggml_rerope_kv_row_bytes(int32_t type, int32_t head_dim);
/* ggml's name of the type ("f32", "f16", "bf16", "q8_0", "q4_0", ...), "unknown" for another value. */
GGML_REROPE_API const char * ggml_rerope_kv_type_name(int32_t type);
/* 1 if the CPU operator reads K or V of `type` at this head_dim, else 0. */
GGML_REROPE_API int ggml_rerope_kv_type_supported(int32_t type, int32_t head_dim);

/* One attention call: the parameters plus the buffers, positions, shapes and types it runs on
 * (as FlashAttention's Flash_fwd_params). Every entry below takes one; the same validator
 * (ggml_rerope_check_call) runs first in each, so bad input gives the same status and message on
 * the CPU, on CUDA (with or without a device or CUDA build) and in the ggml node.
 *   q_pos: n_q positions (NULL: n_kv - n_q .. n_kv - 1, so NULL needs n_q <= n_kv);
 *   k_pos: n_kv positions (NULL: 0 .. n_kv - 1). Positions are >= 0.
 * q, k and v must be finite: they are not scanned (the Python wrapper does), and non-finite values
 * give unspecified output (on x86 a NaN query row came back as zeros). */
typedef struct ggml_rerope_attn_call {
    ggml_rerope_params params;
    const float * q;       /* [n_q][n_head][d] float32                       */
    const void * k;        /* [n_kv][n_head_kv] rows of k_type (row bytes:     */
    const void * v;        /* [n_kv][n_head_kv] rows of v_type  kv_row_bytes) */
    float * out;           /* [n_q][n_head][d] float32; untouched on error    */
    const int32_t * q_pos; /* n_q positions, or NULL                          */
    const int32_t * k_pos; /* n_kv positions, or NULL                         */
    int32_t n_q;           /* >= 1                                            */
    int32_t n_head;        /* >= 1, a multiple of n_head_kv                   */
    int32_t n_kv;          /* >= 1                                            */
    int32_t n_head_kv;     /* >= 1                                            */
    int32_t k_type;        /* ggml_rerope_kv_type of k; unsupported: ERR_UNSUPPORTED */
    int32_t v_type;        /* ggml_rerope_kv_type of v; may differ from k_type      */
    int32_t k_hadamard;    /* 0, or B: k rows hold H_B k (below); the kernels undo it  */
} ggml_rerope_attn_call;

/* Hadamard-rotated keys (k_hadamard = B, a power of two >= 2 dividing d): each block of B
 * dims of a stored key row is H_B x, H_B the orthonormal Walsh-Hadamard matrix (H_B = H_B^T,
 * H_B H_B = I; H_1 = 1, H_2B = [[H_B, H_B], [H_B, -H_B]] / sqrt(2)). A quantized row of H_B k
 * spreads one dim's outlier over B dims, so its blocks' scales fit (llama.cpp rotates quantized
 * caches the same way). The math above holds for the unrotated k = H_B k_stored.
 * Values need nothing of the operator: o_i is linear in v, so rows stored as H_B v give H_B o_i;
 * the caller applies H_B to the output (the runtime does, in its graph). */

/* The contract of a call, checked without reading any buffer: params, q/k/v/out not NULL, the
 * dims, k_type / v_type (and head_dim % 32 == 0 for block types), and that default query
 * positions exist. The host entries then also read q_pos
 * and k_pos (every value >= 0); ggml_rerope_attn_cuda cannot (device memory) and does not. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_check_call(const ggml_rerope_attn_call * call);

/* The call on host buffers, on n_threads CPU threads (<= 0: the CPU count).
 * A query with no visible key gets an output row of zeros. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_attn_host(const ggml_rerope_attn_call * call, int32_t n_threads);

/* SIMD paths of the CPU kernel. */
typedef enum ggml_rerope_simd {
    GGML_REROPE_SIMD_AUTO = -1,
    GGML_REROPE_SIMD_SCALAR = 0,
    GGML_REROPE_SIMD_AVX2 = 1, /* AVX2 + FMA + F16C */
    GGML_REROPE_SIMD_AVX512 = 2,
    GGML_REROPE_SIMD_NEON = 3
} ggml_rerope_simd;

/* 1 if this CPU and build can run the path. */
GGML_REROPE_API int ggml_rerope_simd_supported(int32_t simd);
/* Forces a path for later calls (AUTO = best supported); ERR_INVALID_ARG for a value
 * outside AUTO..NEON, ERR_UNSUPPORTED for a path this CPU or build lacks. The environment
 * variable GGML_REROPE_SIMD=scalar|avx2|avx512|neon|auto does the same at first use, unless
 * set_simd came first; an unknown or unsupported value there is ignored (best path). */
GGML_REROPE_API ggml_rerope_status ggml_rerope_set_simd(int32_t simd);
/* The path calls use now. */
GGML_REROPE_API int32_t ggml_rerope_get_simd(void);
/* "auto", "scalar", "avx2", "avx512", "neon", or "unknown" for another value. */
GGML_REROPE_API const char * ggml_rerope_simd_name(int32_t simd);

/* ------------------------------------------------------------------ ggml node */

/* Adds the attention to a ggml graph as GGML_OP_CUSTOM node(s) whose work ggml's CPU
 * threads split. q: F32 {d, n_head, n_q}; k, v: {d, n_head_kv, n_kv} of a kv type
 * (contiguous rows; views of a larger cache are fine); q_pos, k_pos: I32 {n_q}, {n_kv}
 * (NULL: the default positions of ggml_rerope_attn_call). The dims and params are checked here by
 * ggml_rerope_check_call's rules; position values (>= 0) are checked at compute. Decode-sized
 * calls (n_q <= 4, n_kv >= 1024) become two nodes: partial softmax results per key chunk (F32
 * scratch), then their merge. Returns F32 {d, n_head, n_q}, or NULL with the message set.
 * A small record of the node's status lives in `ctx`'s memory (an object of about 300 bytes).
 * `params` (and its freq_factors) must stay valid until the graph has been computed. */
GGML_REROPE_API struct ggml_tensor * ggml_rerope_attn(struct ggml_context * ctx, struct ggml_tensor * q,
                                                      struct ggml_tensor * k, struct ggml_tensor * v,
                                                      struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
                                                      const ggml_rerope_params * params);

/* ggml_rerope_attn for keys stored Hadamard-rotated (ggml_rerope_attn_call.k_hadamard = k_hadamard;
 * 0 is ggml_rerope_attn). */
GGML_REROPE_API struct ggml_tensor * ggml_rerope_attn_hadamard_k(struct ggml_context * ctx, struct ggml_tensor * q,
                                                                 struct ggml_tensor * k, struct ggml_tensor * v,
                                                                 struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
                                                                 const ggml_rerope_params * params, int32_t k_hadamard);

/* A ggml callback cannot fail, so a node that fails while ggml computes it (workspace
 * allocation: ERR_NO_MEMORY; a negative position: ERR_INVALID_ARG) writes no rows and records
 * the first failure. ggml_rerope_node_status returns what the node(s) of `node` (a tensor
 * ggml_rerope_attn returned) recorded since they were built or last asked, sets the message,
 * and clears the record; ERR_INVALID_ARG if `node` is not such a tensor.
 * ggml_rerope_graph_status does the same for every such node of `graph` (other nodes are
 * ignored) and returns the first failure in graph order. Whoever computes a graph holding the
 * node must call one of them after every compute: ggml's own status says nothing of ours. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_node_status(const struct ggml_tensor * node);
GGML_REROPE_API ggml_rerope_status ggml_rerope_graph_status(struct ggml_cgraph * graph);

/* ------------------------------------------------------------------ CUDA */

/* 1 if the library was built with CUDA kernels and a device is visible. */
GGML_REROPE_API int ggml_rerope_cuda_available(void);

/* The call on device pointers (q, k, v, out, and q_pos / k_pos: device arrays or NULL), on
 * `stream` (a cudaStream_t; NULL = default). Order: ggml_rerope_check_call's checks (positions
 * are not read), then what the kernels support (head_dim 64 or 128, n_head <= 65535, the K/V
 * types they read; else ERR_UNSUPPORTED), then the device: ERR_CUDA when no device is visible, and ERR_CUDA right
 * after the contract in a build without CUDA (GGML_REROPE_CUDA=OFF: no kernels, so no limits),
 * so that "CUDA cannot run here" is one status and the contract can be tested on any machine.
 * Pointers that are not device memory: ERR_INVALID_ARG. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_attn_call * call, void * stream);

/* Waits until the work queued on `stream` (NULL = default stream) has finished;
 * GGML_REROPE_ERR_CUDA with CUDA's message if any of it failed. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream);

/* The call on host buffers (as ggml_rerope_attn_host, positions checked too): copies the inputs
 * to the device, runs ggml_rerope_attn_cuda on a private stream, copies `out` back, waits. For
 * tests and benchmarks; n_q <= 4 runs the decode (split-K) kernel, more the prefill kernel.
 * Statuses as ggml_rerope_attn_cuda. */
GGML_REROPE_API ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_attn_call * call);

#ifdef __cplusplus
}
#endif

#endif /* GGML_REROPE_H */
