/* ggml_rerope_attn: the kernel as GGML_OP_CUSTOM node(s) that ggml's CPU threads split.
 * Prefill: one node writing the output. Decode (split-K): a node writing partial softmax
 * results per key chunk into an F32 tensor, then a merge node; ggml's barrier between the
 * two nodes replaces any synchronisation inside a callback. */
#include "errors.h"
#include "kernel.h"

#include <ggml.h>
#include <stdlib.h>
#include <string.h>

enum { SRC_Q, SRC_K, SRC_V, SRC_QPOS, SRC_KPOS };

/* The job of the attention node whose sources are those of `node`. */
static void job_from_tensors(rerope_job * job, const struct ggml_tensor * node, const ggml_rerope_params * p,
                             int allow_split) {
    const struct ggml_tensor *q = node->src[SRC_Q], *k = node->src[SRC_K], *v = node->src[SRC_V];
    const struct ggml_tensor *qp = node->src[SRC_QPOS], *kp = node->src[SRC_KPOS];
    memset(job, 0, sizeof *job);
    job->p = *p;
    job->q = (const char *) q->data;
    job->q_nb_head = q->nb[1];
    job->q_nb_tok = q->nb[2];
    job->k = (const char *) k->data;
    job->k_nb_head = k->nb[1];
    job->k_nb_tok = k->nb[2];
    job->v = (const char *) v->data;
    job->v_nb_head = v->nb[1];
    job->v_nb_tok = v->nb[2];
    job->kv_f16 = k->type == GGML_TYPE_F16;
    job->n_q = (int) q->ne[2];
    job->n_head = (int) q->ne[1];
    job->n_kv = (int) k->ne[2];
    job->n_head_kv = (int) k->ne[1];
    job->q_pos = qp ? (const int32_t *) qp->data : NULL;
    job->k_pos = kp ? (const int32_t *) kp->data : NULL;
    rerope_job_finish(job, allow_split);
}

static void run_kernel(const rerope_job * job, int ith, int nth) {
    const size_t bytes = (rerope_workspace_bytes(job) + 63) & ~(size_t) 63;
    void * ws = aligned_alloc(64, bytes);
    if (!ws) {
        rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "ggml_rerope_attn: cannot allocate %zu bytes of workspace", bytes);
        return; /* a ggml callback cannot fail; the node's rows of this thread stay unwritten */
    }
    rerope_select_kernel()(job, ith, nth, ws);
    free(ws);
}

static void attn_forward(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    rerope_job job;
    job_from_tensors(&job, dst, (const ggml_rerope_params *) userdata, 0);
    job.out = (char *) dst->data;
    job.o_nb_head = dst->nb[1];
    job.o_nb_tok = dst->nb[2];
    run_kernel(&job, ith, nth);
}

static void attn_partials(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    rerope_job job;
    job_from_tensors(&job, dst, (const ggml_rerope_params *) userdata, 1);
    job.partials = (float *) dst->data; /* ne = {2 + dp, n_q * n_head, n_split} */
    run_kernel(&job, ith, nth);
}

static void attn_merge(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct ggml_tensor * part = dst->src[0];
    rerope_job job;
    memset(&job, 0, sizeof job);
    job.d = (int) dst->ne[0];
    job.dp = (int) part->ne[0] - 2;
    job.n_head = (int) dst->ne[1];
    job.n_q = (int) dst->ne[2];
    job.n_split = (int) part->ne[2];
    job.partials = (float *) part->data;
    job.out = (char *) dst->data;
    job.o_nb_head = dst->nb[1];
    job.o_nb_tok = dst->nb[2];
    rerope_merge_partials(&job, ith, nth);
}

static int positions_ok(const struct ggml_tensor * t, int64_t n, const char * name) {
    if (!t) return 1;
    if (t->type != GGML_TYPE_I32 || t->ne[0] != n || ggml_nelements(t) != n || !ggml_is_contiguous(t)) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s must be a contiguous I32 tensor of %lld elements", name,
                    (long long) n);
        return 0;
    }
    return 1;
}

static int kv_ok(const struct ggml_tensor * t, const char * name, int64_t d) {
    if (t->type != GGML_TYPE_F16 && t->type != GGML_TYPE_F32) {
        rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "%s must be F16 or F32, got %s", name, ggml_type_name(t->type));
        return 0;
    }
    if (t->ne[0] != d || t->ne[3] != 1 || t->nb[0] != ggml_type_size(t->type)) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s must be {d=%lld, n_head_kv, n_kv} with contiguous rows", name,
                    (long long) d);
        return 0;
    }
    return 1;
}

struct ggml_tensor * ggml_rerope_attn(struct ggml_context * ctx, struct ggml_tensor * q, struct ggml_tensor * k,
                                      struct ggml_tensor * v, struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
                                      const ggml_rerope_params * params) {
    if (ggml_rerope_check_params(params) != GGML_REROPE_OK) return NULL;
    if (!ctx || !q || !k || !v) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s is NULL", !ctx ? "ctx" : !q ? "q" : !k ? "k" : "v");
        return NULL;
    }
    const int64_t d = params->head_dim;
    if (q->type != GGML_TYPE_F32) {
        rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "q must be F32, got %s", ggml_type_name(q->type));
        return NULL;
    }
    if (q->ne[0] != d || q->ne[3] != 1 || q->nb[0] != sizeof(float)) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q must be {d=%lld, n_head, n_q} with contiguous rows, got ne0=%lld",
                    (long long) d, (long long) q->ne[0]);
        return NULL;
    }
    if (!kv_ok(k, "k", d) || !kv_ok(v, "v", d)) return NULL;
    if (k->type != v->type || k->ne[1] != v->ne[1] || k->ne[2] != v->ne[2]) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "k and v must have the same type and shape");
        return NULL;
    }
    const int64_t n_q = q->ne[2], n_head = q->ne[1], n_kv = k->ne[2], n_head_kv = k->ne[1];
    if (n_q < 1 || n_kv < 1 || n_head < 1 || n_head_kv < 1 || n_q > INT32_MAX || n_kv > INT32_MAX) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "empty or too large q/k/v");
        return NULL;
    }
    if (n_head % n_head_kv != 0) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head (%lld) must be a multiple of n_head_kv (%lld)",
                    (long long) n_head, (long long) n_head_kv);
        return NULL;
    }
    if (!positions_ok(q_pos, n_q, "q_pos") || !positions_ok(k_pos, n_kv, "k_pos")) return NULL;
    if (!q_pos && n_q > n_kv) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q_pos is NULL but n_q > n_kv");
        return NULL;
    }

    struct ggml_tensor * args[5] = {q, k, v, q_pos, k_pos};
    rerope_job job;
    memset(&job, 0, sizeof job);
    job.p = *params;
    job.n_q = (int) n_q;
    job.n_head = (int) n_head;
    job.n_kv = (int) n_kv;
    job.n_head_kv = (int) n_head_kv;
    rerope_job_finish(&job, 1);
    void * ud = (void *) params;
    if (job.n_split == 0)
        return ggml_custom_4d(ctx, GGML_TYPE_F32, d, n_head, n_q, 1, args, 5, attn_forward, GGML_N_TASKS_MAX, ud);
    struct ggml_tensor * part = ggml_custom_4d(ctx, GGML_TYPE_F32, 2 + job.dp, n_q * n_head, job.n_split, 1, args, 5,
                                               attn_partials, GGML_N_TASKS_MAX, ud);
    if (!part) return NULL;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, d, n_head, n_q, 1, &part, 1, attn_merge, GGML_N_TASKS_MAX, NULL);
}
