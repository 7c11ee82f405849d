// Public CUDA entries: validation and argument set-up; the kernels run through
// rerope_cuda::run_attention (launch.cu: kernel choice, workspace, launches).
#include <cuda_runtime.h>
#include <math.h>

#include <stdint.h>
#include <string.h>

#include "check_call.h"
#include "cuda_status.cuh"
#include "dispatch.cuh"
#include "kv_staging.cuh"
#include "launch.cuh"

using rerope_cuda::AttnArgs;

namespace {

// f32 / f16 rows are read in 16-byte pieces; staged rows (kv_staging.cuh) from any 4-byte
// boundary, so a view of a quantized cache may start at any row.
size_t needed_alignment(int kv_type) { return kv_type == GGML_REROPE_KV_F32 || kv_type == GGML_REROPE_KV_F16 ? 16 : 4; }

ggml_rerope_status check_device_pointer(const void * p, const char * name, size_t alignment = 16) {
    cudaPointerAttributes attr;
    const cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return rerope_fail(GGML_REROPE_ERR_CUDA, "cudaPointerGetAttributes(%s): %s", name, cudaGetErrorString(err));
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "%s is not a device pointer (use ggml_rerope_attn_cuda_from_host "
                           "for host buffers)",
                           name);
    if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s must be %zu-byte aligned", name, alignment);
    return GGML_REROPE_OK;
}

// What the kernels are built for, beyond the contract (rerope_check_call): a valid call
// outside it is ERR_UNSUPPORTED (the CPU operator runs it).
ggml_rerope_status check_kernel_limits(const ggml_rerope_attn_call * c) {
    if (c->params.head_dim != 64 && c->params.head_dim != 128)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "the CUDA kernels are built for head_dim 64 and 128, got %d (use the CPU operator)",
                           c->params.head_dim);
    const int types[2] = {c->k_type, c->v_type};
    const char * names[2] = {"k_type", "v_type"};
    for (int i = 0; i < 2; ++i)
        if (!rerope_cuda::kv_type_on_cuda(types[i]))
            return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                               "the CUDA kernels read K and V as f32, f16, bf16, q8_0 or q4_0; %s is %s "
                               "(use the CPU operator)",
                               names[i], ggml_rerope_kv_type_name(types[i]));
    if (!rerope_cuda::kv_pair_on_cuda(c->k_type, c->v_type))
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "the CUDA kernels read f32 K only with f32 V and the other way round; got k %s, v %s "
                           "(use the CPU operator)",
                           ggml_rerope_kv_type_name(c->k_type), ggml_rerope_kv_type_name(c->v_type));
    if (c->n_head > 65535)  // grid dimension
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "the CUDA kernels take n_head <= 65535, got %d", c->n_head);
    return GGML_REROPE_OK;
}

// The shared contract first, then the kernels' limits, and only then the device, so the same
// bad input gives the CPU's status and message on a machine without a GPU.
ggml_rerope_status check_cuda_call(const ggml_rerope_attn_call * c, int what) {
    ggml_rerope_status st = rerope_check_call(c, what);
    if (st == GGML_REROPE_OK) st = check_kernel_limits(c);
    if (st == GGML_REROPE_OK && !ggml_rerope_cuda_available())
        st = rerope_fail(GGML_REROPE_ERR_CUDA, "no CUDA device is visible");
    return st;
}

AttnArgs make_args(const ggml_rerope_params * p, const float * q, int32_t n_q, int32_t n_head, const int32_t * q_pos,
                   const void * k, const void * v, int32_t n_kv, int32_t n_head_kv, const int32_t * k_pos, float * out,
                   int32_t k_type, int32_t v_type, int32_t k_hadamard) {
    AttnArgs a;
    memset(&a, 0, sizeof(a));
    a.q = q, a.k = k, a.v = v, a.out = out, a.q_pos = q_pos, a.k_pos = k_pos, a.k_bounds = nullptr;
    a.n_q = n_q, a.n_head = n_head, a.n_kv = n_kv, a.n_head_kv = n_head_kv, a.group = n_head / n_head_kv;
    a.k_type = k_type, a.v_type = v_type, a.k_hadamard = k_hadamard;
    a.k_row_bytes = rerope_cuda::kv_row_bytes(k_type, p->head_dim);
    a.v_row_bytes = rerope_cuda::kv_row_bytes(v_type, p->head_dim);
    a.k_chunks = rerope_cuda::staged_row_chunks(k, a.k_row_bytes);
    a.v_chunks = rerope_cuda::staged_row_chunks(v, a.v_row_bytes);
    a.n_rot = p->n_rot, a.rope_mode = p->rope_mode, a.far_mode = p->far_mode, a.window = p->window;
    a.group_size = p->group_size, a.logn_len = p->logn_train_len, a.causal = p->causal ? 1 : 0;
    a.leaky_k = p->leaky_k;
    a.chunk_len = p->chunk_len, a.sliding_window = p->sliding_window, a.sink_tokens = p->sink_tokens;
    a.scale = p->scale > 0.0f ? p->scale : (float) (1.0 / sqrt((double) p->head_dim));
    for (int m = 0; m < p->n_rot / 2; ++m) {
        const double f = p->freq_factors ? (double) p->freq_factors[m] : 1.0;
        a.theta[m] = f * pow((double) p->rope_base, -2.0 * m / p->n_rot);
    }
    return a;
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

ggml_rerope_status ggml_rerope_attn_cuda(const ggml_rerope_attn_call * call, void * stream) {
    ggml_rerope_status st = check_cuda_call(call, RR_CHECK_BUFFERS);  // positions are device memory: not read
    if (st != GGML_REROPE_OK) return st;
    const ggml_rerope_attn_call & c = *call;
    const void * ptrs[] = {c.q, c.k, c.v, c.out, c.q_pos, c.k_pos};
    const char * names[] = {"q", "k", "v", "out", "q_pos", "k_pos"};
    const size_t align[] = {16, needed_alignment(c.k_type), needed_alignment(c.v_type), 16, 16, 16};
    for (int i = 0; i < 6; ++i)
        if (ptrs[i] && (st = check_device_pointer(ptrs[i], names[i], align[i])) != GGML_REROPE_OK) return st;
    const AttnArgs a = make_args(&c.params, c.q, c.n_q, c.n_head, c.q_pos, c.k, c.v, c.n_kv, c.n_head_kv, c.k_pos,
                                 c.out, c.k_type, c.v_type, c.k_hadamard);
    return rerope_cuda::run_attention(a, c.params.head_dim, static_cast<cudaStream_t>(stream));
}

ggml_rerope_status ggml_rerope_cuda_synchronize(void * stream) {
    rerope_clear_error();
    REROPE_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_attn_cuda_from_host(const ggml_rerope_attn_call * call) {
    ggml_rerope_status st = check_cuda_call(call, RR_CHECK_BUFFERS | RR_CHECK_POSITIONS);
    if (st != GGML_REROPE_OK) return st;
    const ggml_rerope_params * params = &call->params;
    const float * q = call->q;
    const void *k = call->k, *v = call->v;
    const int32_t *q_pos = call->q_pos, *k_pos = call->k_pos;
    float * out = call->out;
    const int32_t n_q = call->n_q, n_head = call->n_head, n_kv = call->n_kv, n_head_kv = call->n_head_kv;
    const int32_t k_type = call->k_type, v_type = call->v_type;

    const int d = params->head_dim;
    const size_t q_bytes = (size_t) n_q * n_head * d * sizeof(float);
    const size_t k_bytes = (size_t) n_kv * n_head_kv * rerope_cuda::kv_row_bytes(k_type, d);
    const size_t v_bytes = (size_t) n_kv * n_head_kv * rerope_cuda::kv_row_bytes(v_type, d);
    const size_t off_k = (q_bytes + 255) / 256 * 256;
    const size_t off_v = off_k + (k_bytes + 255) / 256 * 256;
    const size_t off_o = off_v + (v_bytes + 255) / 256 * 256;
    const size_t off_qp = off_o + (q_bytes + 255) / 256 * 256;
    const size_t off_kp = off_qp + ((size_t) n_q * 4 + 255) / 256 * 256;
    const size_t total = off_kp + (size_t) n_kv * 4;

    cudaStream_t stream = nullptr;
    REROPE_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    char * dev = nullptr;
    cudaError_t err = cudaMallocAsync(reinterpret_cast<void **>(&dev), total, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev, q, q_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev + off_k, k, k_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dev + off_v, v, v_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess && q_pos)
        err = cudaMemcpyAsync(dev + off_qp, q_pos, n_q * 4, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess && k_pos)
        err = cudaMemcpyAsync(dev + off_kp, k_pos, n_kv * 4, cudaMemcpyHostToDevice, stream);
    // Poison the output (all-ones bits = NaN): a row the kernels fail to write shows up.
    if (err == cudaSuccess) err = cudaMemsetAsync(dev + off_o, 0xff, q_bytes, stream);
    if (err != cudaSuccess) {
        if (dev) cudaFreeAsync(dev, stream);
        cudaStreamSynchronize(stream);
        cudaStreamDestroy(stream);
        return rerope_fail(GGML_REROPE_ERR_CUDA, "copying the inputs to the device: %s", cudaGetErrorString(err));
    }
    const AttnArgs a =
        make_args(params, reinterpret_cast<const float *>(dev), n_q, n_head,
                  q_pos ? reinterpret_cast<const int32_t *>(dev + off_qp) : nullptr, dev + off_k, dev + off_v, n_kv,
                  n_head_kv, k_pos ? reinterpret_cast<const int32_t *>(dev + off_kp) : nullptr,
                  reinterpret_cast<float *>(dev + off_o), k_type, v_type, call->k_hadamard);
    st = rerope_cuda::run_attention(a, d, stream);
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
