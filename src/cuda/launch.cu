// Running one attention call on the device: kernel choice (decode for a few queries,
// prefill otherwise), the call's workspace, the launches in stream order, and CUDA
// errors turned into statuses. The public entries (api.cu) validate and call this.
#include <cuda_runtime.h>

#include <atomic>
#include <stdint.h>

#include "cuda_status.cuh"
#include "decode_split.cuh"
#include "heuristics.cuh"
#include "kv_staging.cuh"
#include "kv_types.cuh"
#include "launch.cuh"

namespace rerope_cuda {
namespace {

// Workspace pieces start on 256-byte boundaries, as cudaMalloc's blocks do: every vector
// load of the kernels stays aligned.
constexpr size_t align256(size_t n) { return (n + 255) / 256 * 256; }

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

ggml_rerope_status run_attention(AttnArgs a, int head_dim, cudaStream_t stream) {
    int device = 0, sm_count = 1;
    REROPE_CUDA_TRY(cudaGetDevice(&device));
    REROPE_CUDA_TRY(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    const ggml_rerope_status pool_st = keep_pool_memory(device);
    if (pool_st != GGML_REROPE_OK) return pool_st;

    // Hadamard-rotated keys: the staged tensor-core decode undoes them in its tile loads, only for
    // the tiles that need the keys themselves (far CLAMP tiles score the stored keys against rotated
    // queries). The other kernels read f16 rows (f32 for f32 keys) of the workspace, unrotated by a
    // pre-pass, O(n_kv d log B). From here `a` describes the keys the kernels read, `stored` the call's.
    const AttnArgs stored = a;
    const bool decode = runs_decode(a.n_q);
    const bool unrotate_in_tiles = decode && kv_path(a.k_type, a.v_type) == KvPath::STAGED;
    size_t unrotated_bytes = 0;
    if (a.k_hadamard && !unrotate_in_tiles) {
        a.k_type = a.k_type == GGML_REROPE_KV_F32 ? GGML_REROPE_KV_F32 : GGML_REROPE_KV_F16;
        a.k_row_bytes = kv_row_bytes(a.k_type, head_dim);
        a.k_hadamard = 0;
        unrotated_bytes = (size_t) a.n_kv * a.n_head_kv * a.k_row_bytes;
    }

    const bool decode_mma = decode && decode_on_tensor_cores(a.k_type, a.v_type);
    // The tensor-core kernels classify whole key tiles by position range; with explicit key
    // positions those ranges come from a pre-pass (the f32 decode tests each key instead).
    const bool tiles_by_range = !decode || decode_mma;
    const int tile = decode_mma ? DecodeMmaTuning::KEYS : PrefillTuning::BLOCK_N;
    const size_t bounds_bytes = a.k_pos && tiles_by_range ? (size_t) ((a.n_kv + tile - 1) / tile) * sizeof(int2) : 0;
    const size_t rot_bytes = (size_t) a.n_kv * a.n_head_kv * head_dim * sizeof(half);

    // Workspace: [tile bounds] | [unrotated keys] | decode: split partials; prefill: rotated keys (near, far).
    DecodePlan plan = {};
    size_t bytes = align256(bounds_bytes) + align256(unrotated_bytes);
    if (decode) {
        plan = decode_mma ? plan_decode_mma(a, sm_count) : plan_decode_f32(a, sm_count);
        bytes += decode_workspace_floats(plan, a, head_dim) * sizeof(float);
    } else {
        bytes += rot_bytes * (far_rotates_keys(a) ? 2 : 1);
    }
    Scratch scratch;
    scratch.stream = stream;
    if (bytes) REROPE_CUDA_TRY(cudaMallocAsync(&scratch.ptr, bytes, stream));
    char * base = static_cast<char *>(scratch.ptr);
    char * unrotated = base + align256(bounds_bytes);
    char * after_keys = unrotated + align256(unrotated_bytes);
    if (bounds_bytes) {
        a.k_bounds = reinterpret_cast<const int2 *>(base);
        REROPE_CUDA_TRY(launch_key_bounds(a.k_pos, a.n_kv, tile, reinterpret_cast<int2 *>(base), stream));
    }
    if (unrotated_bytes) {
        REROPE_CUDA_TRY(launch_unrotate_keys(stored, head_dim, unrotated, stream));
        a.k = unrotated;
        a.k_chunks = staged_row_chunks(a.k, a.k_row_bytes);
    }
    if (decode) {
        float * work = reinterpret_cast<float *>(after_keys);
        if (decode_mma) REROPE_CUDA_TRY(launch_decode_mma(a, plan, head_dim, work, stream));
        else REROPE_CUDA_TRY(launch_decode_f32(a, plan, head_dim, work, stream));
    } else {
        half * k_near = reinterpret_cast<half *>(after_keys);
        half * k_far = far_rotates_keys(a) ? k_near + rot_bytes / sizeof(half) : nullptr;
        REROPE_CUDA_TRY(launch_rotate_keys(a, head_dim, k_near, k_far, stream));
        a.k_near = k_near;
        a.k_far = k_far;
        REROPE_CUDA_TRY(launch_prefill(a, head_dim, stream));
    }
    return GGML_REROPE_OK;
}

}  // namespace rerope_cuda
