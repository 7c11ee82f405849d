/* ggml compute status -> ours, for every path that computes a graph (in one go or in pieces). */
#include "rt_errors.h"

ggml_rerope_status rt_compute_status(enum ggml_status gs) {
    if (gs == GGML_STATUS_SUCCESS) return GGML_REROPE_OK;
    return rerope_fail(gs == GGML_STATUS_ALLOC_FAILED ? GGML_REROPE_ERR_NO_MEMORY : GGML_REROPE_ERR_UNSUPPORTED,
                       "graph compute failed (ggml status %d)", (int) gs);
}
