// Launchers of the kernels, called from launch.cu (run_attention). Each returns cudaSuccess
// or the first CUDA error; run_attention turns that into a status. head_dim is one that
// dispatch.cuh lists; args.k_type / v_type a pair it reads (kv_pair_on_cuda).
#pragma once

#include <cuda_runtime.h>

#include "common.cuh"
#include "ggml_rerope.h"
#include "heuristics.cuh"

namespace rerope_cuda {

// One call, validated by the caller: picks the kernels, makes the workspace and launches
// them on `stream` (launch.cu).
ggml_rerope_status run_attention(AttnArgs a, int head_dim, cudaStream_t stream);

// Prefill (prefill.cu): needs args.k_near (and k_far unless CLAMP) from launch_rotate_keys.
cudaError_t launch_prefill(const AttnArgs & args, int head_dim, cudaStream_t stream);

// Prefill's key pre-pass (rotate_keys.cu): k_near = R_j k_j (f16, layout of k); k_far
// (NULL unless far_mode is LEAKY, GROUP or CHUNK) = R_(far_k_pos(j)) k_j.
cudaError_t launch_rotate_keys(const AttnArgs & args, int head_dim, half * k_near, half * k_far, cudaStream_t stream);

// Hadamard-rotated keys' pre-pass (unrotate_keys.cu): out = the rows of args.k (args.k_type,
// args.k_hadamard = B) with H_B applied to each block of B dims: f32 rows for f32 keys, else f16.
cudaError_t launch_unrotate_keys(const AttnArgs & args, int head_dim, void * out, cudaStream_t stream);

// Split-K decode, then the merge of the splits (launch_decode_reduce) on the same stream.
// `work` holds decode_workspace_floats(plan, ...) floats (decode_split.cuh); plan from
// heuristics.cuh's plan_decode_f32 / plan_decode_mma.
cudaError_t launch_decode_f32(const AttnArgs & args, const DecodePlan & plan, int head_dim, float * work,
                              cudaStream_t stream);  // f32 K/V (decode_f32.cu)
cudaError_t launch_decode_mma(const AttnArgs & args, const DecodePlan & plan, int head_dim, float * work,
                              cudaStream_t stream);  // f16 / staged K/V, tensor cores (decode_mma.cu)

// Merges the splits' partials into args.out (decode_reduce.cu).
cudaError_t launch_decode_reduce(const AttnArgs & args, const DecodePlan & plan, int head_dim, const float * work,
                                 cudaStream_t stream);

// Per key tile (min, max) positions of k_pos into bounds (ceil(n_kv / tile) entries; key_bounds.cu).
cudaError_t launch_key_bounds(const int32_t * k_pos, int n_kv, int tile, int2 * bounds, cudaStream_t stream);

}  // namespace rerope_cuda
