// Prefill's key pre-pass: the raw keys of one call rotated once, in f16, into a transient
// workspace -- near: R_(k_pos[j]) k_j; far (LEAKY / GROUP / CHUNK only): R_(far_k_pos(j)) k_j.
// One thread per rotation unit (a pair, or two unrotated dimensions). Keys of any type the
// kernels read (kv_types.cuh), dequantized element by element as they are read.
#include "dispatch.cuh"
#include "heuristics.cuh"
#include "kv_types.cuh"
#include "launch.cuh"
#include "rotary.cuh"

namespace rerope_cuda {
namespace {

template <int KEY_TYPE>
__global__ void rotate_keys_kernel(const __grid_constant__ AttnArgs a, int head_dim, half * k_near, half * k_far) {
    __shared__ double s_theta[MAX_PAIRS];
    for (int i = threadIdx.x; i < a.n_rot / 2; i += blockDim.x) s_theta[i] = a.theta[i];
    __syncthreads();
    const int units = head_dim / 2;
    const long long idx = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    const long long rows = (long long) a.n_kv * a.n_head_kv;
    if (idx >= rows * units) return;
    const long long row = idx / units;  // = j * n_head_kv + head
    const int u = (int) (idx % units);
    const int j = (int) (row / a.n_head_kv);
    int da, db;
    unit_dims(u, a.n_rot, a.rope_mode, da, db);
    const unsigned char * kr = static_cast<const unsigned char *>(a.k) + row * a.k_row_bytes;
    const float xa = dequant1<KEY_TYPE>(kr, da), xb = dequant1<KEY_TYPE>(kr, db);
    const size_t o = (size_t) row * head_dim;
    if (u >= a.n_rot / 2) {
        k_near[o + da] = __float2half_rn(xa), k_near[o + db] = __float2half_rn(xb);
        if (k_far) k_far[o + da] = __float2half_rn(xa), k_far[o + db] = __float2half_rn(xb);
        return;
    }
    const int p = k_position(a, j);
    float c, s;
    rot_cos_sin((double) p, s_theta[u], c, s);
    k_near[o + da] = __float2half_rn(xa * c - xb * s);
    k_near[o + db] = __float2half_rn(xa * s + xb * c);
    if (k_far) {
        rot_cos_sin(far_k_pos(a, p), s_theta[u], c, s);
        k_far[o + da] = __float2half_rn(xa * c - xb * s);
        k_far[o + db] = __float2half_rn(xa * s + xb * c);
    }
}

}  // namespace

cudaError_t launch_rotate_keys(const AttnArgs & a, int head_dim, half * k_near, half * k_far, cudaStream_t stream) {
    constexpr int TH = ROTATE_KEYS_THREADS;
    const long long items = (long long) a.n_kv * a.n_head_kv * (head_dim / 2);
    const unsigned blocks = (unsigned) ((items + TH - 1) / TH);
    return KEY_TYPE_SWITCH(a.k_type, [&] {
        rotate_keys_kernel<kKeyType><<<blocks, TH, 0, stream>>>(a, head_dim, k_near, k_far);
        return cudaGetLastError();
    });
}

}  // namespace rerope_cuda
