// Launchers of the kernels (defined in prefill.cu and decode.cu, called from launch.cu).
// Each returns cudaSuccess or the first CUDA error; launch.cu turns that into a status.
#pragma once

#include <cuda_runtime.h>

#include "common.cuh"
#include "ggml_rerope.h"

namespace rerope_cuda {

// One call, validated by the caller: picks the kernels, makes the workspace and launches
// them on `stream` (launch.cu). kv_type is a ggml_rerope_kv_type.
ggml_rerope_status run_attention(AttnArgs a, int head_dim, int kv_type, cudaStream_t stream);

// kv_is_f16: 1 for half K/V, 0 for float. head_dim is 64 or 128.
cudaError_t launch_prefill(const AttnArgs & args, int head_dim, int kv_is_f16, cudaStream_t stream);

// Prefill's key pre-pass (rotate_keys.cu): k_near = R_j k_j (f16, layout of k); k_far
// (NULL unless far_mode is LEAKY or GROUP) = R_(far_k_pos(j)) k_j.
cudaError_t launch_rotate_keys(const AttnArgs & args, int head_dim, int kv_is_f16, half * k_near, half * k_far,
                               cudaStream_t stream);

// Flash-decoding: needs n_split x n_head_kv x rows x (head_dim + 2) floats of workspace
// (decode_workspace_floats); `work` must hold that many.
struct DecodePlan {
    int n_split, keys_per_split, row_chunks, rows;  // rows = n_q * group; keys_per_split: scalar kernel
};
DecodePlan plan_decode(const AttnArgs & args, int head_dim, int sm_count);
size_t decode_workspace_floats(const DecodePlan & plan, const AttnArgs & args, int head_dim);
cudaError_t launch_decode(const AttnArgs & args, const DecodePlan & plan, int head_dim, int kv_is_f16, float * work,
                          cudaStream_t stream);

// Decode on tensor cores for f16 K/V (decode_mma.cu): same workspace layout and merge.
DecodePlan plan_decode_mma(const AttnArgs & args, int sm_count);
cudaError_t launch_decode_mma(const AttnArgs & args, const DecodePlan & plan, int head_dim, float * work,
                              cudaStream_t stream);
int decode_mma_key_tile();  // key tile size (for launch_key_bounds)

// Merges the splits' partials into args.out (both decode kernels).
cudaError_t launch_decode_reduce(const AttnArgs & args, const DecodePlan & plan, int head_dim, const float * work,
                                 cudaStream_t stream);

// Per key tile (min, max) positions of k_pos into bounds (ceil(n_kv / tile) entries).
cudaError_t launch_key_bounds(const int32_t * k_pos, int n_kv, int tile, int2 * bounds, cudaStream_t stream);

// Key tile size of the prefill kernel (for launch_key_bounds).
int prefill_key_tile();

}  // namespace rerope_cuda
