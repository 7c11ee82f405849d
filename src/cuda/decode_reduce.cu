// The last step of split-K decode: merges the splits' partial results (decode_split.cuh's
// workspace) into the output rows, for both decode kernels.
#include <math.h>

#include "decode_split.cuh"
#include "dispatch.cuh"
#include "launch.cuh"
#include "softmax.cuh"

namespace rerope_cuda {
namespace {

// out row = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s over the splits. One block per
// (row, KV head): split weights first, cooperatively, into shared memory; then each
// thread (one output dim) sums over splits with independent loads in flight.
template <int D>
__global__ void __launch_bounds__(D)
    reduce_kernel(const __grid_constant__ AttnArgs a, const DecodePlan plan, const float * work) {
    extern __shared__ float s_w[];  // [n_split] weights
    __shared__ float s_red[D / 32];
    const int r = blockIdx.x, kvh = blockIdx.y, d = threadIdx.x, lane = d % 32, warp = d / 32;
    const int n_split = plan.n_split;
    const size_t stride = (size_t) a.n_head_kv * plan.rows;  // slots between splits
    const size_t slot0 = (size_t) kvh * plan.rows + r;
    const float * part_ml = work + (size_t) n_split * stride * D;

    float mx = -INFINITY;
    for (int s = d; s < n_split; s += D) mx = fmaxf(mx, part_ml[(slot0 + s * stride) * 2]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) s_red[warp] = mx;
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < D / 32; ++w) M = fmaxf(M, s_red[w]);
    const float mu = softmax_base(M);
    __syncthreads();
    float den = 0.f;
    for (int s = d; s < n_split; s += D) {
        const size_t sl = slot0 + s * stride;
        const float w = softmax_weight(part_ml[sl * 2], mu);
        s_w[s] = w;
        den += w * part_ml[sl * 2 + 1];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
    if (lane == 0) s_red[warp] = den;
    __syncthreads();
    den = 0.f;
#pragma unroll
    for (int w = 0; w < D / 32; ++w) den += s_red[w];
    float num = 0.f;
#pragma unroll 8
    for (int s = 0; s < n_split; ++s) num += s_w[s] * work[(slot0 + s * stride) * D + d];
    const int qi = r / a.group, head = kvh * a.group + r % a.group;
    a.out[((size_t) qi * a.n_head + head) * D + d] = den > 0.f ? num / den : 0.f;
}

}  // namespace

cudaError_t launch_decode_reduce(const AttnArgs & a, const DecodePlan & plan, int head_dim, const float * work,
                                 cudaStream_t stream) {
    const size_t smem = plan.n_split * sizeof(float);
    return HEADDIM_SWITCH(head_dim, [&] {
        reduce_kernel<kHeadDim><<<dim3(plan.rows, a.n_head_kv), kHeadDim, smem, stream>>>(a, plan, work);
        return cudaGetLastError();
    });
}

}  // namespace rerope_cuda
