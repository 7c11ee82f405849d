"""Thin cffi (ABI mode) binding of libggml_rerope: declarations and the loader, nothing else.

The API modules (attention.py, model.py) sit on top of this, as llama-cpp-python's
llama.py sits on llama_cpp.py.
"""

from __future__ import annotations

import os
import pathlib

import cffi

from .errors import LibraryNotFoundError

ffi = cffi.FFI()

# --- src/ggml_rerope.h --------------------------------------------------------------
# The types are copied exactly from the header (tests/test_binding_abi.py compiles them against
# it: sizes, offsets, every field and enumerator on both sides); the functions as declared there.
ffi.cdef(
    """
typedef enum ggml_rerope_status {
    GGML_REROPE_OK = 0,
    GGML_REROPE_ERR_INVALID_ARG = 1, /* bad dims, null pointer, parameter out of range */
    GGML_REROPE_ERR_UNSUPPORTED = 2, /* tensor type or feature this build cannot run  */
    GGML_REROPE_ERR_NO_MEMORY = 3,   /* an allocation failed                          */
    GGML_REROPE_ERR_CUDA = 4,        /* a CUDA call failed or no device is present     */
    GGML_REROPE_ERR_IO = 5,          /* file missing, unreadable, corrupt or truncated */
    GGML_REROPE_ERR_CONTEXT_FULL = 6 /* runtime: more tokens than n_ctx                */
} ggml_rerope_status;

typedef enum ggml_rerope_rope_mode {
    GGML_REROPE_MODE_NORM = 0, /* pairs (2m, 2m+1)       */
    GGML_REROPE_MODE_NEOX = 2  /* pairs (m, m + d_r / 2) */
} ggml_rerope_rope_mode;

typedef enum ggml_rerope_far_mode {
    GGML_REROPE_FAR_CLAMP = 0, /* ReRoPE: rel = w                             */
    GGML_REROPE_FAR_LEAKY = 1, /* Leaky ReRoPE: rel = w + (i - j - w) / k     */
    GGML_REROPE_FAR_GROUP = 2, /* Self-Extend: fl(i/G) - fl(j/G) + w - fl(w/G) */
    GGML_REROPE_FAR_CHUNK = 3  /* Dual Chunk Attention: w - (j mod s)            */
} ggml_rerope_far_mode;

typedef enum ggml_rerope_kv_type {
    GGML_REROPE_KV_F32 = 0,
    GGML_REROPE_KV_F16 = 1,
    GGML_REROPE_KV_Q4_0 = 2,
    GGML_REROPE_KV_Q4_1 = 3,
    GGML_REROPE_KV_Q5_0 = 6,
    GGML_REROPE_KV_Q5_1 = 7,
    GGML_REROPE_KV_Q8_0 = 8,
    GGML_REROPE_KV_IQ4_NL = 20,
    GGML_REROPE_KV_BF16 = 30
} ggml_rerope_kv_type;

typedef enum ggml_rerope_simd {
    GGML_REROPE_SIMD_AUTO = -1,
    GGML_REROPE_SIMD_SCALAR = 0,
    GGML_REROPE_SIMD_AVX2 = 1, /* AVX2 + FMA + F16C */
    GGML_REROPE_SIMD_AVX512 = 2,
    GGML_REROPE_SIMD_NEON = 3
} ggml_rerope_simd;

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

ggml_rerope_params ggml_rerope_default_params(int32_t head_dim);
ggml_rerope_status ggml_rerope_check_params(const ggml_rerope_params * params);
const char * ggml_rerope_last_error(void);
const char * ggml_rerope_status_name(ggml_rerope_status status);

size_t ggml_rerope_kv_row_bytes(int32_t type, int32_t head_dim);
const char * ggml_rerope_kv_type_name(int32_t type);
int ggml_rerope_kv_type_supported(int32_t type, int32_t head_dim);

ggml_rerope_status ggml_rerope_check_call(const ggml_rerope_attn_call * call);
ggml_rerope_status ggml_rerope_attn_host(const ggml_rerope_attn_call * call, int32_t n_threads);

int ggml_rerope_simd_supported(int32_t simd);
ggml_rerope_status ggml_rerope_set_simd(int32_t simd);
int32_t ggml_rerope_get_simd(void);
const char * ggml_rerope_simd_name(int32_t simd);

struct ggml_context;
struct ggml_tensor;
struct ggml_cgraph;
struct ggml_tensor * ggml_rerope_attn(struct ggml_context * ctx, struct ggml_tensor * q, struct ggml_tensor * k,
    struct ggml_tensor * v, struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
    const ggml_rerope_params * params);
struct ggml_tensor * ggml_rerope_attn_hadamard_k(struct ggml_context * ctx, struct ggml_tensor * q,
    struct ggml_tensor * k, struct ggml_tensor * v, struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
    const ggml_rerope_params * params, int32_t k_hadamard);
ggml_rerope_status ggml_rerope_node_status(const struct ggml_tensor * node);
ggml_rerope_status ggml_rerope_graph_status(struct ggml_cgraph * graph);

int ggml_rerope_cuda_available(void);
ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_attn_call * call, void * stream);
ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream);
ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_attn_call * call);
"""
)

# --- src/ggml_rerope_runtime.h ---------------------------------------------------------
ffi.cdef(
    """
typedef struct ggml_rerope_model ggml_rerope_model;
typedef struct ggml_rerope_context ggml_rerope_context;

typedef enum ggml_rerope_split_mode {
    GGML_REROPE_SPLIT_MODE_NONE = 0,
    GGML_REROPE_SPLIT_MODE_LAYER = 1,
    GGML_REROPE_SPLIT_MODE_ROW = 2
} ggml_rerope_split_mode;

typedef struct ggml_rerope_model_params {
    int32_t n_gpu_layers;
    int32_t use_mmap;
    int32_t split_mode;
    int32_t main_gpu;
    float tensor_split[16];
} ggml_rerope_model_params;

typedef struct ggml_rerope_model_info {
    char architecture[32];
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_rot;
    int32_t rope_mode;
    float rope_base;
    int32_t n_ctx_train;
    float norm_eps;
    int32_t has_rope_freqs;
    int64_t n_params;
    int64_t weight_bytes;
} ggml_rerope_model_info;

typedef struct ggml_rerope_context_params {
    int32_t n_ctx;
    int32_t n_batch;
    int32_t n_threads;
    int32_t type_k;
    int32_t type_v;
    int32_t n_seq_max;
} ggml_rerope_context_params;

typedef struct ggml_rerope_batch {
    int32_t n_tokens;
    const int32_t * tokens;
    const int32_t * seq_id;
    const int8_t * logits;
} ggml_rerope_batch;

typedef struct ggml_rerope_scheme {
    int32_t window;
    int32_t far_mode;
    float leaky_k;
    int32_t group_size;
    int32_t logn_train_len;
    float rope_base;
    const float * freq_factors;
    float attn_factor;
    int32_t chunk_len;
    int32_t sliding_window;
    int32_t sink_tokens;
} ggml_rerope_scheme;

ggml_rerope_model_params ggml_rerope_model_default_params(void);
ggml_rerope_context_params ggml_rerope_context_default_params(void);
ggml_rerope_scheme ggml_rerope_scheme_default(const ggml_rerope_model * model);
ggml_rerope_status ggml_rerope_model_load(const char * path, const ggml_rerope_model_params * params,
    ggml_rerope_model ** out);
void ggml_rerope_model_free(ggml_rerope_model * model);
ggml_rerope_status ggml_rerope_model_get_info(const ggml_rerope_model * model, ggml_rerope_model_info * out);

typedef struct ggml_rerope_device_plan {
    char name[32];
    int32_t is_gpu;
    int32_t first_layer;
    int32_t n_layers;
    int32_t has_output;
    int64_t weight_bytes;
    int64_t kv_bytes;
    int64_t compute_bytes;
    int64_t free_bytes;
    int32_t fits;
} ggml_rerope_device_plan;

ggml_rerope_status ggml_rerope_split_layers(int32_t n_layer, int32_t n_gpu_layers, int32_t split_mode,
    int32_t main_gpu, int32_t n_gpu, const float * split, int32_t * dev);
ggml_rerope_status ggml_rerope_model_plan(const char * path, const ggml_rerope_model_params * mparams,
    const ggml_rerope_context_params * cparams, const int64_t * gpu_free, int32_t n_gpu,
    ggml_rerope_device_plan * out, int32_t max_out, int32_t * n_out);
ggml_rerope_status ggml_rerope_context_new(ggml_rerope_model * model, const ggml_rerope_context_params * params,
    ggml_rerope_context ** out);
void ggml_rerope_context_free(ggml_rerope_context * ctx);
ggml_rerope_status ggml_rerope_context_set_scheme(ggml_rerope_context * ctx, const ggml_rerope_scheme * scheme);
ggml_rerope_status ggml_rerope_eval(ggml_rerope_context * ctx, const int32_t * tokens, int32_t n_tokens,
    float * logits, int32_t all_logits);
ggml_rerope_status ggml_rerope_decode(ggml_rerope_context * ctx, const ggml_rerope_batch * batch, float * logits);
int32_t ggml_rerope_n_seq_max(const ggml_rerope_context * ctx);
int32_t ggml_rerope_n_ctx_seq(const ggml_rerope_context * ctx);
int32_t ggml_rerope_seq_n_past(const ggml_rerope_context * ctx, int32_t seq);
ggml_rerope_status ggml_rerope_seq_truncate(ggml_rerope_context * ctx, int32_t seq, int32_t n_keep);
ggml_rerope_status ggml_rerope_seq_kv_remove(ggml_rerope_context * ctx, int32_t seq, int32_t p0, int32_t p1);
ggml_rerope_status ggml_rerope_seq_set_scheme(ggml_rerope_context * ctx, int32_t seq,
    const ggml_rerope_scheme * scheme);
int32_t ggml_rerope_n_past(const ggml_rerope_context * ctx);
int32_t ggml_rerope_n_ctx(const ggml_rerope_context * ctx);
ggml_rerope_status ggml_rerope_truncate(ggml_rerope_context * ctx, int32_t n_keep);
ggml_rerope_status ggml_rerope_kv_remove(ggml_rerope_context * ctx, int32_t p0, int32_t p1);
size_t ggml_rerope_kv_bytes_per_token(const ggml_rerope_context * ctx);
size_t ggml_rerope_state_size(const ggml_rerope_context * ctx);
ggml_rerope_status ggml_rerope_state_get(const ggml_rerope_context * ctx, void * dst, size_t size);
ggml_rerope_status ggml_rerope_state_set(ggml_rerope_context * ctx, const void * src, size_t size);

typedef struct ggml_rerope_rope_info {
    char scaling_type[16];
    float scaling_factor;
    int32_t scaling_orig_ctx;
    float scaling_attn_factor;
    float yarn_ext_factor;
    float yarn_attn_factor;
    float yarn_beta_fast;
    float yarn_beta_slow;
    float yarn_log_multiplier;
    int32_t has_scaling_factor, has_scaling_orig_ctx, has_scaling_attn_factor, has_yarn_ext_factor,
            has_yarn_attn_factor, has_yarn_beta_fast, has_yarn_beta_slow, has_yarn_log_multiplier;
    int32_t n_factors;
    int32_t has_rope_freqs;
    int32_t has_factors_long;
    int32_t has_factors_short;
} ggml_rerope_rope_info;

typedef enum ggml_rerope_rope_factors {
    GGML_REROPE_FACTORS_ROPE_FREQS = 0, GGML_REROPE_FACTORS_LONG = 1, GGML_REROPE_FACTORS_SHORT = 2
} ggml_rerope_rope_factors;

ggml_rerope_status ggml_rerope_model_get_rope_info(const ggml_rerope_model * model, ggml_rerope_rope_info * out);
ggml_rerope_status ggml_rerope_model_get_rope_factors(const ggml_rerope_model * model, int32_t which, float * out,
    int32_t n);
"""
)


def _candidates():
    env = os.environ.get("GGML_REROPE_LIBRARY")
    if env:
        yield pathlib.Path(env)
        return
    here = pathlib.Path(__file__).resolve().parent
    yield from sorted(here.glob("libggml_rerope.so*"))  # installed wheel
    yield from sorted(here.glob("libggml_rerope*.dylib"))
    yield here.parent / "build" / "src" / "libggml_rerope.so"  # source checkout, `cmake -B build`
    # A source checkout run from its root (`python -m ggml_rerope.chat` there imports this copy of
    # the package) uses the library that `pip install .` put beside the installed copy.
    try:
        from importlib import metadata

        dist = metadata.distribution("ggml-rerope")
        files = dist.files or []
        yield from sorted(pathlib.Path(dist.locate_file(f)) for f in files if f.name.startswith("libggml_rerope.so"))
    except Exception:  # not installed, or metadata unreadable: nothing more to try
        pass


def _load():
    # Load llama-cpp-python first: its libggml is then the one our library binds to,
    # so the process holds a single ggml.
    # Without llama-cpp-python (a GPU test machine, say) the library's RUNPATH finds ggml.
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pass

    tried = []
    for path in _candidates():
        if path.exists():
            try:
                return ffi.dlopen(str(path)), path
            except OSError as e:
                raise LibraryNotFoundError(f"cannot load {path}: {e}") from None
        tried.append(str(path))
    raise LibraryNotFoundError(
        "libggml_rerope not found (looked in: " + ", ".join(tried) + "). Install the package with "
        "`pip install --no-build-isolation .`, or build it with `cmake -B build && cmake --build build`, "
        "or set GGML_REROPE_LIBRARY to the library's path."
    )


def _enumerators():
    """Every enumerator of the cdef's enums (GGML_REROPE_FAR_CLAMP, ...), read from `ffi` alone."""
    values = {}
    for name in ffi.list_types()[0]:
        ctype = ffi.typeof(name)
        if ctype.kind == "enum":
            values.update(ctype.relements)
    return values


_ENUMERATORS = _enumerators()


class _Library:
    """libggml_rerope, opened at its first use rather than at import, so that `import ggml_rerope`
    and the command-line tools' argument parsing work without it, and a missing library surfaces
    as a LibraryNotFoundError (a ReropeError) where the tools report errors, not as a traceback.
    The enum constants (lib.GGML_REROPE_KV_F16, ...) come from the declarations and do not open it."""

    def __init__(self):
        self._lib = None
        self.path = None

    def __getattr__(self, name):
        if name in _ENUMERATORS:
            return _ENUMERATORS[name]
        if self._lib is None:
            self._lib, self.path = _load()
        return getattr(self._lib, name)


lib = _Library()


def last_error() -> str:
    return ffi.string(lib.ggml_rerope_last_error()).decode("utf-8", "replace")


# --- ggml subset ------------------------------------------------------------------------
# The few ggml / ggml-cpu functions the tests and the operator benchmark use to build and
# compute real ggml graphs (our node, ggml_rope_ext + ggml_flash_attn_ext). Declared on the
# same `ffi` so tensor pointers pass between libggml and libggml_rerope. Loaded lazily
# from llama-cpp-python's lib/ (the ggml this process already holds): see ggml().
ffi.cdef(
    """
struct ggml_context;
struct ggml_tensor;
struct ggml_cgraph;
struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };

struct ggml_context * ggml_init(struct ggml_init_params params);
void ggml_free(struct ggml_context * ctx);
struct ggml_tensor * ggml_new_tensor_1d(struct ggml_context * ctx, int type, int64_t ne0);
struct ggml_tensor * ggml_new_tensor_2d(struct ggml_context * ctx, int type, int64_t ne0, int64_t ne1);
struct ggml_tensor * ggml_new_tensor_3d(struct ggml_context * ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2);
void * ggml_get_data(const struct ggml_tensor * tensor);
size_t ggml_nbytes(const struct ggml_tensor * tensor);
struct ggml_tensor * ggml_view_3d(struct ggml_context * ctx, struct ggml_tensor * a, int64_t ne0, int64_t ne1,
    int64_t ne2, size_t nb1, size_t nb2, size_t offset);
struct ggml_tensor * ggml_permute(struct ggml_context * ctx, struct ggml_tensor * a, int axis0, int axis1,
    int axis2, int axis3);
struct ggml_tensor * ggml_rope_ext(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b,
    struct ggml_tensor * c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale,
    float ext_factor, float attn_factor, float beta_fast, float beta_slow);
struct ggml_tensor * ggml_flash_attn_ext(struct ggml_context * ctx, struct ggml_tensor * q, struct ggml_tensor * k,
    struct ggml_tensor * v, struct ggml_tensor * mask, float scale, float max_bias, float logit_softcap);
struct ggml_cgraph * ggml_new_graph(struct ggml_context * ctx);
void ggml_build_forward_expand(struct ggml_cgraph * cgraph, struct ggml_tensor * tensor);

void ggml_cpu_init(void);
int ggml_graph_compute_with_ctx(struct ggml_context * ctx, struct ggml_cgraph * cgraph, int n_threads);

"""
)

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_I32 = 0, 1, 26
_ggml_libs = None


def ggml():
    """(libggml-base, libggml-cpu) of llama-cpp-python, opened on this module's `ffi`."""
    global _ggml_libs
    if _ggml_libs is None:
        import llama_cpp

        libdir = pathlib.Path(llama_cpp.__file__).resolve().parent / "lib"
        base = ffi.dlopen(str(libdir / "libggml-base.so"))
        cpu = ffi.dlopen(str(libdir / "libggml-cpu.so"))
        cpu.ggml_cpu_init()
        _ggml_libs = (base, cpu)
    return _ggml_libs
