/* Default parameters and their validation (the parameter half of the contract). */
#include "errors.h"

#include <math.h>

ggml_rerope_params ggml_rerope_default_params(int32_t head_dim) {
    ggml_rerope_params p = {0};
    p.head_dim = head_dim;
    p.n_rot = head_dim;
    p.rope_mode = GGML_REROPE_MODE_NORM;
    p.rope_base = 10000.0f;
    p.freq_factors = NULL;
    p.window = 1024;
    p.far_mode = GGML_REROPE_FAR_CLAMP;
    p.leaky_k = 1.0f;
    p.group_size = 1;
    p.logn_train_len = 0;
    p.scale = 0.0f;
    p.causal = 1;
    p.chunk_len = 0;
    p.sliding_window = 0;
    p.sink_tokens = 0;
    return p;
}

ggml_rerope_status ggml_rerope_check_params(const ggml_rerope_params * p) {
    rerope_clear_error();
    if (!p) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "params is NULL");
    if (p->head_dim < 1 || p->head_dim > 256)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "head_dim must be in 1..256, got %d", p->head_dim);
    if (p->n_rot < 0 || p->n_rot > p->head_dim || p->n_rot % 2 != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_rot must be even and in 0..head_dim (%d), got %d",
                           p->head_dim, p->n_rot);
    if (p->rope_mode != GGML_REROPE_MODE_NORM && p->rope_mode != GGML_REROPE_MODE_NEOX)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "rope_mode must be NORM (0) or NEOX (2), got %d", p->rope_mode);
    if (!(p->rope_base > 0.0f) || !isfinite(p->rope_base))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "rope_base must be a finite number > 0, got %g",
                           (double) p->rope_base);
    if (p->window < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "window must be >= 1, got %d", p->window);
    switch (p->far_mode) {
        case GGML_REROPE_FAR_CLAMP: break;
        case GGML_REROPE_FAR_LEAKY:
            if (!(p->leaky_k >= 1.0f) || !isfinite(p->leaky_k))
                return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "leaky_k must be >= 1 when leaky is on, got %g",
                                   (double) p->leaky_k);
            break;
        case GGML_REROPE_FAR_GROUP:
            if (p->group_size < 1)
                return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "group_size must be >= 1, got %d", p->group_size);
            break;
        case GGML_REROPE_FAR_CHUNK:
            /* 2s > w keeps every near pair within one chunk boundary (the contract's near rule) */
            if (p->chunk_len < 1 || p->chunk_len > p->window || 2 * (int64_t) p->chunk_len <= p->window)
                return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                                   "chunk_len must be in window/2 < chunk_len <= window (window %d), got %d", p->window,
                                   p->chunk_len);
            break;
        default:
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "far_mode must be CLAMP, LEAKY, GROUP or CHUNK, got %d",
                               p->far_mode);
    }
    if (p->sliding_window < 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "sliding_window must be >= 0 (0 = off), got %d",
                           p->sliding_window);
    if (p->sink_tokens < 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "sink_tokens must be >= 0, got %d", p->sink_tokens);
    if (p->logn_train_len < 0 || p->logn_train_len == 1)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "logn_train_len must be 0 (off) or >= 2, got %d",
                           p->logn_train_len);
    if (!(p->scale >= 0.0f) || !isfinite(p->scale))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "scale must be >= 0 (0 = 1/sqrt(d)), got %g",
                           (double) p->scale);
    if (p->freq_factors) {
        for (int m = 0; m < p->n_rot / 2; m++) {
            if (!(p->freq_factors[m] > 0.0f) || !isfinite(p->freq_factors[m]))
                return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "freq_factors[%d] must be finite and > 0, got %g", m,
                                   (double) p->freq_factors[m]);
        }
    }
    return GGML_REROPE_OK;
}
