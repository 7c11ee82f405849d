// Public CUDA entries: validation, argument set-up, kernel choice (decode for a few
// queries, prefill otherwise), workspace, and CUDA errors turned into statuses.
#include <cuda_runtime.h>
#include <math.h>

#include <atomic>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "errors.h"
}
#include "launch.cuh"

using rerope_cuda::AttnArgs;

namespace {

// Decode kernel for at most this many queries; prefill above.
constexpr int DECODE_MAX_QUERIES = 4;

#define REROPE_CUDA_TRY(call)                                                                                     \
    do {                                                                                                          \
        const cudaError_t err_ = (call);                                                                          \
        if (err_ != cudaSuccess)                                                                                  \
            return rerope_fail(GGML_REROPE_ERR_CUDA, "%s: %s (%s)", #call, cudaGetErrorString(err_),              \
                               cudaGetErrorName(err_));                                                           \
    } while (0)

// Stream-ordered scratch memory, freed on every return path.
struct Scratch {
    void * ptr = nullptr;
    cudaStream_t stream = nullptr;
    ~Scratch() {
        if (ptr) cudaFreeAsync(ptr, stream);
    }
};

ggml_rerope_status check_device_pointer(const void * p, const char * name) {
    cudaPointerAttributes attr;
    const cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return rerope_fail(GGML_REROPE_ERR_CUDA, "cudaPointerGetAttributes(%s): %s", name, cudaGetErrorString(err));
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s is not a device pointer (use ggml_rerope_attn_cuda_from_host "
                           "for host buffers)", name);
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s must be 16-byte aligned", name);
    return GGML_REROPE_OK;
}

ggml_rerope_status check_shapes(const ggml_rerope_params * params, int32_t n_q, int32_t n_head, int32_t kv_type,
                                int32_t n_kv, int32_t n_head_kv) {
    const ggml_rerope_status st = ggml_rerope_check_params(params);
    if (st != GGML_REROPE_OK) return st;
    if (n_q < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_q must be >= 1, got %d", n_q);
    if (n_kv < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_kv must be >= 1, got %d", n_kv);
    if (n_head < 1 || n_head_kv < 1 || n_head % n_head_kv != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "n_head (%d) must be a positive multiple of n_head_kv (%d)", n_head, n_head_kv);
    if (n_head > 65535) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head must be <= 65535, got %d", n_head);
    if (kv_type != GGML_REROPE_KV_F32 && kv_type != GGML_REROPE_KV_F16)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "kv_type must be F32 (0) or F16 (1), got %d", kv_type);
    if (params->head_dim != 64 && params->head_dim != 128)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "the CUDA kernels are built for head_dim 64 and 128, got %d (use the CPU operator)",
                           params->head_dim);
    return GGML_REROPE_OK;
}

AttnArgs make_args(const ggml_rerope_params * p, const float * q, int32_t n_q, int32_t n_head,
                   const int32_t * q_pos, const void * k, const void * v, int32_t n_kv, int32_t n_head_kv,
                   const int32_t * k_pos, float * out) {
    AttnArgs a;
    memset(&a, 0, sizeof(a));
    a.q = q, a.k = k, a.v = v, a.out = out, a.q_pos = q_pos, a.k_pos = k_pos, a.k_bounds = nullptr;
    a.n_q = n_q, a.n_head = n_head, a.n_kv = n_kv, a.n_head_kv = n_head_kv, a.group = n_head / n_head_kv;
    a.n_rot = p->n_rot, a.rope_mode = p->rope_mode, a.far_mode = p->far_mode, a.window = p->window;
    a.group_size = p->group_size, a.logn_len = p->logn_train_len, a.causal = p->causal ? 1 : 0;
    a.leaky_k = p->leaky_k;
    a.scale = p->scale > 0.0f ? p->scale : (float) (1.0 / sqrt((double) p->head_dim));
    for (int m = 0; m < p->n_rot / 2; ++m) {
        const double f = p->freq_factors ? (double) p->freq_factors[m] : 1.0;
        a.theta[m] = f * pow((double) p->rope_base, -2.0 * m / p->n_rot);
    }
    return a;
}

// The workspace comes from the device's default stream-ordered pool. Its default release
// threshold (0) hands memory back to the driver at every synchronisation, and mapping it
// again cost ~0.1 ms a call (measured on the H100): keep it cached instead (once per device).
std::atomic<uint64_t> pool_configured{0};

ggml_rerope_status keep_pool_memory(int device) {
    const uint64_t bit = 1ull << (device & 63);
    if (pool_configured.load(std::memory_order_relaxed) & bit) return GGML_REROPE_OK;
    cudaMemPool_t pool;
    REROPE_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    REROPE_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    pool_configured.fetch_or(bit);
    return GGML_REROPE_OK;
}

ggml_rerope_status run(AttnArgs a, int head_dim, int kv_type, cudaStream_t stream) {
    const int f16 = kv_type == GGML_REROPE_KV_F16;
    const bool decode = a.n_q <= DECODE_MAX_QUERIES;
    int device = 0, sm_count = 1;
    REROPE_CUDA_TRY(cudaGetDevice(&device));
    REROPE_CUDA_TRY(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    const ggml_rerope_status pool_st = keep_pool_memory(device);
    if (pool_st != GGML_REROPE_OK) return pool_st;

    rerope_cuda::DecodePlan plan = {};
    size_t bytes = 0, bounds_bytes = 0;
    // f16 decode runs on tensor cores; f32 K/V decode on the scalar split-K kernel.
    const bool decode_mma = decode && f16;
    const int tile = decode_mma ? rerope_cuda::decode_mma_key_tile() : rerope_cuda::prefill_key_tile();
    if (a.k_pos && (!decode || decode_mma)) bounds_bytes = (size_t) ((a.n_kv + tile - 1) / tile) * sizeof(int2);
    bytes = (bounds_bytes + 255) / 256 * 256;
    const size_t rot_bytes = (size_t) a.n_kv * a.n_head_kv * head_dim * sizeof(half);
    if (decode) {
        plan = decode_mma ? rerope_cuda::plan_decode_mma(a, sm_count) : rerope_cuda::plan_decode(a, head_dim, sm_count);
        bytes += rerope_cuda::decode_workspace_floats(plan, a, head_dim) * sizeof(float);
    } else {
        bytes += rot_bytes * (a.far_mode == GGML_REROPE_FAR_CLAMP ? 1 : 2);  // rotated keys
    }
    Scratch scratch;
    scratch.stream = stream;
    if (bytes) REROPE_CUDA_TRY(cudaMallocAsync(&scratch.ptr, bytes, stream));
    char * base = static_cast<char *>(scratch.ptr);
    if (bounds_bytes) {  // prefill with explicit key positions: per-tile position ranges
        a.k_bounds = reinterpret_cast<const int2 *>(base);
        REROPE_CUDA_TRY(rerope_cuda::launch_key_bounds(a.k_pos, a.n_kv, tile, reinterpret_cast<int2 *>(base), stream));
    }
    if (decode) {
        float * work = reinterpret_cast<float *>(base + (bounds_bytes + 255) / 256 * 256);
        if (decode_mma)
            REROPE_CUDA_TRY(rerope_cuda::launch_decode_mma(a, plan, head_dim, work, stream));
        else
            REROPE_CUDA_TRY(rerope_cuda::launch_decode(a, plan, head_dim, f16, work, stream));
    } else {
        half * k_near = reinterpret_cast<half *>(base + (bounds_bytes + 255) / 256 * 256);
        half * k_far = a.far_mode == GGML_REROPE_FAR_CLAMP ? nullptr : k_near + rot_bytes / sizeof(half);
        REROPE_CUDA_TRY(rerope_cuda::launch_rotate_keys(a, head_dim, f16, k_near, k_far, stream));
        a.k_near = k_near;
        a.k_far = k_far;
        REROPE_CUDA_TRY(rerope_cuda::launch_prefill(a, head_dim, f16, stream));
    }
    return GGML_REROPE_OK;
}

}  // namespace

extern "C" {

int ggml_rerope_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear: no driver / no device is not an error here
        return 0;
    }
    return n > 0 ? 1 : 0;
}

ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_params * params, const float * q, int32_t n_q,
                                         int32_t n_head, const int32_t * q_pos, const void * k, const void * v,
                                         int32_t kv_type, int32_t n_kv, int32_t n_head_kv, const int32_t * k_pos,
                                         float * out, void * stream) {
    rerope_clear_error();
    if (!q || !k || !v || !out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q, k, v and out must not be NULL");
    ggml_rerope_status st = check_shapes(params, n_q, n_head, kv_type, n_kv, n_head_kv);
    if (st != GGML_REROPE_OK) return st;
    if (!ggml_rerope_cuda_available()) return rerope_fail(GGML_REROPE_ERR_CUDA, "no CUDA device is visible");
    const void * ptrs[] = {q, k, v, out, q_pos, k_pos};
    const char * names[] = {"q", "k", "v", "out", "q_pos", "k_pos"};
    for (int i = 0; i < 6; ++i)
        if (ptrs[i] && (st = check_device_pointer(ptrs[i], names[i])) != GGML_REROPE_OK) return st;
    const AttnArgs a = make_args(params, q, n_q, n_head, q_pos, k, v, n_kv, n_head_kv, k_pos, out);
    return run(a, params->head_dim, kv_type, static_cast<cudaStream_t>(stream));
}

ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream) {
    rerope_clear_error();
    REROPE_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_params * params, const float * q, int32_t n_q,
                                                   int32_t n_head, const int32_t * q_pos, const void * k,
                                                   const void * v, int32_t kv_type, int32_t n_kv, int32_t n_head_kv,
                                                   const int32_t * k_pos, float * out) {
    rerope_clear_error();
    if (!q || !k || !v || !out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q, k, v and out must not be NULL");
    ggml_rerope_status st = check_shapes(params, n_q, n_head, kv_type, n_kv, n_head_kv);
    if (st != GGML_REROPE_OK) return st;
    for (int i = 0; q_pos && i < n_q; ++i)
        if (q_pos[i] < 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q_pos[%d] = %d is negative", i, q_pos[i]);
    for (int j = 0; k_pos && j < n_kv; ++j)
        if (k_pos[j] < 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "k_pos[%d] = %d is negative", j, k_pos[j]);
    if (!ggml_rerope_cuda_available()) return rerope_fail(GGML_REROPE_ERR_CUDA, "no CUDA device is visible");

    const int d = params->head_dim;
    const size_t q_bytes = (size_t) n_q * n_head * d * sizeof(float);
    const size_t kv_bytes = (size_t) n_kv * n_head_kv * d * (kv_type == GGML_REROPE_KV_F16 ? 2 : 4);
    const size_t off_k = (q_bytes + 255) / 256 * 256;
    const size_t off_v = off_k + (kv_bytes + 255) / 256 * 256;
    const size_t off_o = off_v + (kv_bytes + 255) / 256 * 256;
    const size_t off_qp = off_o + (q_bytes + 255) / 256 * 256;
    const size_t off_kp = off_qp + ((size_t) n_q * 4 + 255) / 256 * 256;
    const size_t total = off_kp + (size_t) n_kv * 4;

    cudaStream_t stream = nullptr;
    REROPE_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    char * dev = nullptr;
    cudaError_t err = cudaMallocAsync(reinterpret_cast<void **>(&dev), total, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev, q, q_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev + off_k, k, kv_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev + off_v, v, kv_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess && q_pos) err = cudaMemcpyAsync(dev + off_qp, q_pos, n_q * 4, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess && k_pos) err = cudaMemcpyAsync(dev + off_kp, k_pos, n_kv * 4, cudaMemcpyHostToDevice, stream);
    // Poison the output (all-ones bits = NaN): a row the kernels fail to write shows up.
    if (err == cudaSuccess) err = cudaMemsetAsync(dev + off_o, 0xff, q_bytes, stream);
    if (err != cudaSuccess) {
        if (dev) cudaFreeAsync(dev, stream);
        cudaStreamSynchronize(stream);
        cudaStreamDestroy(stream);
        return rerope_fail(GGML_REROPE_ERR_CUDA, "copying the inputs to the device: %s", cudaGetErrorString(err));
    }
    const AttnArgs a = make_args(params, reinterpret_cast<const float *>(dev), n_q, n_head,
                                 q_pos ? reinterpret_cast<const int32_t *>(dev + off_qp) : nullptr, dev + off_k,
                                 dev + off_v, n_kv, n_head_kv,
                                 k_pos ? reinterpret_cast<const int32_t *>(dev + off_kp) : nullptr,
                                 reinterpret_cast<float *>(dev + off_o));
    st = run(a, d, kv_type, stream);
    if (st == GGML_REROPE_OK) {
        err = cudaMemcpyAsync(out, dev + off_o, q_bytes, cudaMemcpyDeviceToHost, stream);
        if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
        if (err != cudaSuccess)
            st = rerope_fail(GGML_REROPE_ERR_CUDA, "running the kernel / copying the output back: %s",
                             cudaGetErrorString(err));
    }
    cudaFreeAsync(dev, stream);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
    return st;
}

}  // extern "C"
