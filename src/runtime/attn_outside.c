/* Attention outside the ggml graph, for backends that cannot run GGML_OP_CUSTOM (ggml-cuda).
 *
 * Each layer's graph carries a placeholder where the attention output goes: a copy of Q named
 * "rerope_attn-<layer>" (GGML_OP_CONT: every backend runs it, and the allocator never places it
 * over Q, so Q is still intact when the callback runs). ggml-backend's scheduler asks the eval
 * callback about every node; for a placeholder it computes the graph up to it, synchronises the
 * backend and calls back, and the ReRoPE kernel then overwrites the placeholder with the
 * attention output, reading Q from its source and K/V straight from the cache buffers (the rows
 * this graph just wrote included). Queries are the cache's last n_tokens rows, which are the
 * kernel's default positions, so no position arrays are needed. */
#include "errors.h"
#include "rt_internal.h"

#include <stdio.h>
#include <string.h>

#define PLACEHOLDER_PREFIX "rerope_attn-"

struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il) {
    struct ggml_tensor * t = ggml_cont(c, q);
    ggml_format_name(t, PLACEHOLDER_PREFIX "%d", il);
    return t;
}

/* Layer of a placeholder, or -1 for any other node. */
static int placeholder_layer(const struct ggml_tensor * t) {
    if (t->op != GGML_OP_CONT || strncmp(t->name, PLACEHOLDER_PREFIX, sizeof(PLACEHOLDER_PREFIX) - 1) != 0)
        return -1;
    int il = -1;
    return sscanf(t->name + sizeof(PLACEHOLDER_PREFIX) - 1, "%d", &il) == 1 ? il : -1;
}

static ggml_rerope_status run_attention(ggml_rerope_context * ctx, struct ggml_tensor * t, int il) {
    const struct ggml_tensor * q = t->src[0];
    const rt_kv_cache * kv = &ctx->kv;
    if (il >= kv->n_layer || q->type != GGML_TYPE_F32 || !ggml_is_contiguous(q) || !ggml_is_contiguous(t))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "attention placeholder '%s' is malformed", t->name);
    const int32_t n_q = (int32_t) q->ne[2], n_head = (int32_t) q->ne[1];
    const int32_t n_head_kv = (int32_t) kv->k[il]->ne[1];
    const int32_t kv_type = kv->type == GGML_TYPE_F16 ? GGML_REROPE_KV_F16 : GGML_REROPE_KV_F32;
    ggml_rerope_status s;
    if (ctx->gpu) {
        s = ggml_rerope_attn_cuda(&ctx->attn, (const float *) q->data, n_q, n_head, NULL, kv->k[il]->data,
                                  kv->v[il]->data, kv_type, ctx->n_kv_now, n_head_kv, NULL, (float *) t->data, NULL);
        /* the scheduler goes on with ggml-cuda's own stream, which does not wait for ours */
        if (!s) s = ggml_rerope_cuda_synchronize(NULL);
    } else {
        s = ggml_rerope_attn_host(&ctx->attn, (const float *) q->data, n_q, n_head, NULL, kv->k[il]->data,
                                  kv->v[il]->data, kv_type, ctx->n_kv_now, n_head_kv, NULL, (float *) t->data,
                                  ctx->cparams.n_threads);
    }
    return s ? rerope_fail_in(s, "layer %d attention", il) : GGML_REROPE_OK;
}

bool rt_attn_eval_callback(struct ggml_tensor * t, bool ask, void * user_data) {
    ggml_rerope_context * ctx = user_data;
    const int il = placeholder_layer(t);
    if (ask) return il >= 0;
    if (ctx->attn_status) return false;
    ctx->attn_status = run_attention(ctx, t, il);
    return ctx->attn_status == GGML_REROPE_OK; /* false cancels the rest of the compute */
}
