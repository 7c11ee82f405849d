/* The contract of one attention call (ggml_rerope_attn_call), checked in one order with one
 * set of messages. Params are checked by ggml_rerope_check_params (params.c). */
#include "check_call.h"

#include "errors.h"

static ggml_rerope_status check_positions(const int32_t * pos, int32_t n, const char * name) {
    if (!pos) return GGML_REROPE_OK;
    for (int32_t i = 0; i < n; i++)
        if (pos[i] < 0)
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s[%d] is %d; positions must be >= 0", name, i, pos[i]);
    return GGML_REROPE_OK;
}

/* A type value is ggml's numbering: one the operator cannot read is unsupported, not invalid. */
static ggml_rerope_status check_kv_type(int32_t type, const char * name, int32_t head_dim) {
    if (ggml_rerope_kv_type_supported(type, head_dim)) return GGML_REROPE_OK;
    if (ggml_rerope_kv_row_bytes(type, head_dim) == 0 && ggml_rerope_kv_row_bytes(type, 32) != 0)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s %s (blocks of 32) needs head_dim %% 32 == 0, got %d", name,
                           ggml_rerope_kv_type_name(type), head_dim);
    return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s %d (%s) is not a K/V type the operator reads", name, type,
                       ggml_rerope_kv_type_name(type));
}

ggml_rerope_status rerope_check_call(const ggml_rerope_attn_call * c, int what) {
    rerope_clear_error();
    if (!c) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "call is NULL");
    ggml_rerope_status st = ggml_rerope_check_params(&c->params);
    if (st != GGML_REROPE_OK) return st;
    if (what & RR_CHECK_BUFFERS) {
        if (!c->q) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q is NULL");
        if (!c->k) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "k is NULL");
        if (!c->v) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "v is NULL");
        if (!c->out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "out is NULL");
    }
    if (c->n_q < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_q must be >= 1, got %d", c->n_q);
    if (c->n_kv < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_kv must be >= 1, got %d", c->n_kv);
    if (c->n_head < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head must be >= 1, got %d", c->n_head);
    if (c->n_head_kv < 1)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head_kv must be >= 1, got %d", c->n_head_kv);
    if (c->n_head % c->n_head_kv != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head (%d) must be a multiple of n_head_kv (%d)", c->n_head,
                           c->n_head_kv);
    if ((st = check_kv_type(c->k_type, "k_type", c->params.head_dim)) != GGML_REROPE_OK) return st;
    if ((st = check_kv_type(c->v_type, "v_type", c->params.head_dim)) != GGML_REROPE_OK) return st;
    const int32_t hb = c->k_hadamard;
    if (hb != 0 && (hb < 2 || (hb & (hb - 1)) || c->params.head_dim % hb))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "k_hadamard must be 0 or a power of two >= 2 dividing head_dim (%d), got %d",
                           c->params.head_dim, hb);
    if (!c->q_pos && c->n_q > c->n_kv)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "q_pos is NULL but n_q (%d) > n_kv (%d): default query positions would be negative", c->n_q,
                           c->n_kv);
    if (what & RR_CHECK_POSITIONS) {
        if ((st = check_positions(c->q_pos, c->n_q, "q_pos")) != GGML_REROPE_OK) return st;
        if ((st = check_positions(c->k_pos, c->n_kv, "k_pos")) != GGML_REROPE_OK) return st;
    }
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_check_call(const ggml_rerope_attn_call * call) {
    return rerope_check_call(call, RR_CHECK_BUFFERS);
}
