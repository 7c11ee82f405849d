/* The one validator of an attention call, shared by the CPU entry, the CUDA entries and the
 * ggml node, so the same bad input gives the same status and message everywhere. */
#ifndef GGML_REROPE_CHECK_CALL_H
#define GGML_REROPE_CHECK_CALL_H

#include "ggml_rerope.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What rerope_check_call looks at beyond params, dims, k_type / v_type and the default-position rule. */
enum {
    RR_CHECK_BUFFERS = 1,  /* q, k, v, out must not be NULL (the node has no data before allocation) */
    RR_CHECK_POSITIONS = 2 /* read q_pos / k_pos (host memory): every value >= 0 */
};

/* Returns the status and sets the message (the first failed rule, always in the same order). */
ggml_rerope_status rerope_check_call(const ggml_rerope_attn_call * call, int what);

#ifdef __cplusplus
}
#endif

#endif
