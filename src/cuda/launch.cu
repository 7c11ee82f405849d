// Running one attention call on the device: kernel choice (decode for a few queries,
// prefill otherwise), the call's workspace, the launches in stream order, and CUDA
// errors turned into statuses. The public entries (api.cu) validate and call this.
#include <cuda_runtime.h>

#include <atomic>
#include <stdint.h>

#include "cuda_status.cuh"
#include "launch.cuh"

namespace rerope_cuda {
namespace {

// Decode kernel for at most this many queries; prefill above.
constexpr int DECODE_MAX_QUERIES = 4;

// Stream-ordered scratch memory, freed on every return path.
struct Scratch {
    void * ptr = nullptr;
    cudaStream_t stream = nullptr;
    ~Scratch() {
        if (ptr) cudaFreeAsync(ptr, stream);
    }
};

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

}  // namespace

ggml_rerope_status run_attention(AttnArgs a, int head_dim, int kv_type, cudaStream_t stream) {
    const int f16 = kv_type == GGML_REROPE_KV_F16;
    const bool decode = a.n_q <= DECODE_MAX_QUERIES;
    int device = 0, sm_count = 1;
    REROPE_CUDA_TRY(cudaGetDevice(&device));
    REROPE_CUDA_TRY(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    const ggml_rerope_status pool_st = keep_pool_memory(device);
    if (pool_st != GGML_REROPE_OK) return pool_st;

    DecodePlan plan = {};
    size_t bytes = 0, bounds_bytes = 0;
    // f16 decode runs on tensor cores; f32 K/V decode on the scalar split-K kernel.
    const bool decode_mma = decode && f16;
    const int tile = decode_mma ? decode_mma_key_tile() : prefill_key_tile();
    if (a.k_pos && (!decode || decode_mma)) bounds_bytes = (size_t) ((a.n_kv + tile - 1) / tile) * sizeof(int2);
    bytes = (bounds_bytes + 255) / 256 * 256;
    const size_t rot_bytes = (size_t) a.n_kv * a.n_head_kv * head_dim * sizeof(half);
    if (decode) {
        plan = decode_mma ? plan_decode_mma(a, sm_count) : plan_decode(a, head_dim, sm_count);
        bytes += decode_workspace_floats(plan, a, head_dim) * sizeof(float);
    } else {
        bytes += rot_bytes * (a.far_mode == GGML_REROPE_FAR_CLAMP ? 1 : 2);  // rotated keys
    }
    Scratch scratch;
    scratch.stream = stream;
    if (bytes) REROPE_CUDA_TRY(cudaMallocAsync(&scratch.ptr, bytes, stream));
    char * base = static_cast<char *>(scratch.ptr);
    if (bounds_bytes) {  // prefill with explicit key positions: per-tile position ranges
        a.k_bounds = reinterpret_cast<const int2 *>(base);
        REROPE_CUDA_TRY(launch_key_bounds(a.k_pos, a.n_kv, tile, reinterpret_cast<int2 *>(base), stream));
    }
    if (decode) {
        float * work = reinterpret_cast<float *>(base + (bounds_bytes + 255) / 256 * 256);
        if (decode_mma)
            REROPE_CUDA_TRY(launch_decode_mma(a, plan, head_dim, work, stream));
        else
            REROPE_CUDA_TRY(launch_decode(a, plan, head_dim, f16, work, stream));
    } else {
        half * k_near = reinterpret_cast<half *>(base + (bounds_bytes + 255) / 256 * 256);
        half * k_far = a.far_mode == GGML_REROPE_FAR_CLAMP ? nullptr : k_near + rot_bytes / sizeof(half);
        REROPE_CUDA_TRY(launch_rotate_keys(a, head_dim, f16, k_near, k_far, stream));
        a.k_near = k_near;
        a.k_far = k_far;
        REROPE_CUDA_TRY(launch_prefill(a, head_dim, f16, stream));
    }
    return GGML_REROPE_OK;
}

}  // namespace rerope_cuda
