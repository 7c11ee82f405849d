// Keys stored Hadamard-rotated (hadamard.cuh), for the kernels that do not undo it in their tile
// loads (prefill, the f32 decode, unstaged f16 keys): this pre-pass dequantizes each stored row
// (any type the kernels read), applies Q per block and writes the unrotated rows into the call's
// workspace: f16, or f32 for f32 keys (which keep f32 precision and the f32 decode). One warp a
// row, E = d / 32 elements a lane.
#include <type_traits>

#include "dispatch.cuh"
#include "hadamard.cuh"
#include "heuristics.cuh"
#include "kv_types.cuh"
#include "launch.cuh"

namespace rerope_cuda {
namespace {

constexpr int WARP = 32;

__device__ __forceinline__ void store_row_part(half * dst, const float * x, int n) {
    for (int i = 0; i < n; i += 2) reinterpret_cast<half2 *>(dst)[i / 2] = __floats2half2_rn(x[i], x[i + 1]);
}
__device__ __forceinline__ void store_row_part(float * dst, const float * x, int n) {
    for (int i = 0; i < n; ++i) dst[i] = x[i];
}

template <int D, int KEY_TYPE, typename OUT>
__global__ void unrotate_keys_kernel(const unsigned char * k, int row_bytes, long long rows, int block, float scale,
                                     OUT * out) {
    constexpr int E = D / WARP;  // elements a lane: 2 or 4
    static_assert(E >= 2 && (E & (E - 1)) == 0, "head size must be 32 x a power of two >= 2");
    const int lane = threadIdx.x % WARP;
    const long long row = (long long) blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;  // the same for the whole warp: the shuffles below see every lane
    const unsigned char * src = k + row * row_bytes;
    float x[E];
#pragma unroll
    for (int i = 0; i < E; ++i) x[i] = dequant1<KEY_TYPE>(src, E * lane + i);
    hadamard_lane<E>(x, block, lane);
#pragma unroll
    for (int i = 0; i < E; ++i) x[i] *= scale;
    store_row_part(out + row * D + E * lane, x, E);
}

}  // namespace

cudaError_t launch_unrotate_keys(const AttnArgs & a, int head_dim, void * out, cudaStream_t stream) {
    constexpr int TH = UNROTATE_KEYS_THREADS, ROWS_PER_BLOCK = TH / WARP;
    const long long rows = (long long) a.n_kv * a.n_head_kv;
    const unsigned blocks = (unsigned) ((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    const float scale = (float) (1.0 / sqrt((double) a.k_hadamard));
    const unsigned char * k = static_cast<const unsigned char *>(a.k);
    return HEADDIM_SWITCH(head_dim, [&] {
        return KEY_TYPE_SWITCH(a.k_type, [&] {
            using out_t = std::conditional_t<kKeyType == GGML_REROPE_KV_F32, float, half>;
            unrotate_keys_kernel<kHeadDim, kKeyType, out_t>
                <<<blocks, TH, 0, stream>>>(k, a.k_row_bytes, rows, a.k_hadamard, scale, static_cast<out_t *>(out));
            return cudaGetLastError();
        });
    });
}

}  // namespace rerope_cuda
