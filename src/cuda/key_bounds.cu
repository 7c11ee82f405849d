// Per key tile (min, max) position when the call gives explicit key positions: the kernels
// classify tiles (near / far / band, causal skip) from these ranges. Identity positions need
// no pass (key_tile_bounds computes them).
#include "heuristics.cuh"
#include "launch.cuh"

namespace rerope_cuda {
namespace {

__global__ void key_bounds_kernel(const int32_t * k_pos, int n_kv, int tile, int n_tiles, int2 * bounds) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tiles) return;
    int lo = KPOS_INVALID, hi = -KPOS_INVALID - 1;
    for (int j = t * tile; j < min(n_kv, (t + 1) * tile); ++j) lo = min(lo, k_pos[j]), hi = max(hi, k_pos[j]);
    bounds[t] = make_int2(lo, hi);
}

}  // namespace

cudaError_t launch_key_bounds(const int32_t * k_pos, int n_kv, int tile, int2 * bounds, cudaStream_t stream) {
    const int n_tiles = (n_kv + tile - 1) / tile;
    key_bounds_kernel<<<(n_tiles + KEY_BOUNDS_THREADS - 1) / KEY_BOUNDS_THREADS, KEY_BOUNDS_THREADS, 0, stream>>>(
        k_pos, n_kv, tile, n_tiles, bounds);
    return cudaGetLastError();
}

}  // namespace rerope_cuda
