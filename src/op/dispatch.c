/* Run-time choice of the SIMD kernel: CPU features, GGML_REROPE_SIMD, ggml_rerope_set_simd. */
#include "errors.h"
#include "kernel.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int32_t rerope_simd_forced = -2; /* -2: not initialised yet */

static int cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static int cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

int ggml_rerope_simd_supported(int32_t simd) {
    switch (simd) {
        case GGML_REROPE_SIMD_AUTO:
        case GGML_REROPE_SIMD_SCALAR: return 1;
        case GGML_REROPE_SIMD_AVX2: return cpu_has_avx2();
        case GGML_REROPE_SIMD_AVX512: return cpu_has_avx512();
        case GGML_REROPE_SIMD_NEON:
#if defined(__aarch64__)
            return 1;
#else
            return 0;
#endif
    }
    return 0;
}

static int32_t best_simd(void) {
    if (ggml_rerope_simd_supported(GGML_REROPE_SIMD_AVX512)) return GGML_REROPE_SIMD_AVX512;
    if (ggml_rerope_simd_supported(GGML_REROPE_SIMD_AVX2)) return GGML_REROPE_SIMD_AVX2;
    if (ggml_rerope_simd_supported(GGML_REROPE_SIMD_NEON)) return GGML_REROPE_SIMD_NEON;
    return GGML_REROPE_SIMD_SCALAR;
}

const char * ggml_rerope_simd_name(int32_t simd) {
    switch (simd) {
        case GGML_REROPE_SIMD_AUTO: return "auto";
        case GGML_REROPE_SIMD_SCALAR: return "scalar";
        case GGML_REROPE_SIMD_AVX2: return "avx2";
        case GGML_REROPE_SIMD_AVX512: return "avx512";
        case GGML_REROPE_SIMD_NEON: return "neon";
    }
    return "unknown";
}

/* First use: GGML_REROPE_SIMD=scalar|avx2|avx512|neon|auto, if set and supported. */
static int32_t simd_from_env(void) {
    const char * env = getenv("GGML_REROPE_SIMD");
    if (env && *env) {
        for (int32_t s = GGML_REROPE_SIMD_AUTO; s <= GGML_REROPE_SIMD_NEON; s++) {
            if (strcmp(env, ggml_rerope_simd_name(s)) == 0 && ggml_rerope_simd_supported(s))
                return s == GGML_REROPE_SIMD_AUTO ? best_simd() : s;
        }
    }
    return best_simd();
}

int32_t ggml_rerope_get_simd(void) {
    int32_t s = atomic_load(&rerope_simd_forced);
    if (s == -2) {
        int32_t expected = -2;
        atomic_compare_exchange_strong(&rerope_simd_forced, &expected, simd_from_env());
        s = atomic_load(&rerope_simd_forced);
    }
    return s;
}

ggml_rerope_status ggml_rerope_set_simd(int32_t simd) {
    rerope_clear_error();
    if (simd < GGML_REROPE_SIMD_AUTO || simd > GGML_REROPE_SIMD_NEON)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "simd must be AUTO (-1) .. NEON (3), got %d", simd);
    if (!ggml_rerope_simd_supported(simd))
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "SIMD path %s is not supported by this CPU or build",
                           ggml_rerope_simd_name(simd));
    atomic_store(&rerope_simd_forced, simd == GGML_REROPE_SIMD_AUTO ? best_simd() : simd);
    return GGML_REROPE_OK;
}

rerope_kernel_fn rerope_select_kernel(void) {
    switch (ggml_rerope_get_simd()) {
#if defined(__x86_64__) || defined(_M_X64)
        case GGML_REROPE_SIMD_AVX512: return rerope_kernel_avx512;
        case GGML_REROPE_SIMD_AVX2: return rerope_kernel_avx2;
#endif
#if defined(__aarch64__)
        case GGML_REROPE_SIMD_NEON: return rerope_kernel_neon;
#endif
        default: return rerope_kernel_scalar;
    }
}
