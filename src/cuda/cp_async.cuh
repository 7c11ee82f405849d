// Asynchronous global -> shared copies (cp.async, sm_80+): the K/V pipelines of every kernel.
#pragma once

#include <stdint.h>

namespace rerope_cuda {

__device__ __forceinline__ uint32_t smem_u32(const void * p) { return (uint32_t) __cvta_generic_to_shared(p); }

// 16-byte async copy global -> shared; src_bytes 0 zero-fills (rows past n_kv).
__device__ __forceinline__ void cp_async16(void * dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

}  // namespace rerope_cuda
