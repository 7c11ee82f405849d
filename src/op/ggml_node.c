/* ggml_rerope_attn: the kernel as GGML_OP_CUSTOM node(s) that ggml's CPU threads split.
 * Prefill: one node writing the output. Decode (split-K): a node writing partial softmax
 * results per key chunk into an F32 tensor, then a merge node; ggml's barrier between the
 * two nodes replaces any synchronisation inside a callback.
 *
 * A ggml callback returns nothing, so a failure during compute goes into the node's record
 * (rr_node_state, in the ggml context's memory), which ggml_rerope_node_status /
 * ggml_rerope_graph_status read after the compute. */
#include "check_call.h"
#include "errors.h"
#include "kernel.h"
#include "workspace.h"

#include <ggml.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

enum { SRC_Q, SRC_K, SRC_V, SRC_QPOS, SRC_KPOS };

/* The userdata of the node(s) of one ggml_rerope_attn; shared by ggml's threads. */
typedef struct rr_node_state {
    const ggml_rerope_params * params;
    int32_t k_hadamard;        /* ggml_rerope_attn_call.k_hadamard of the node's keys */
    atomic_int failed;         /* 0: nothing recorded; the first failing thread sets it to 1 */
    ggml_rerope_status status; /* written by that thread only */
    char message[256];
} rr_node_state;

static void record_failure(rr_node_state * s, ggml_rerope_status status) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->failed, &expected, 1)) return; /* an earlier failure is kept */
    s->status = status;
    snprintf(s->message, sizeof s->message, "%s", ggml_rerope_last_error());
}

/* The call a node's sources describe (data pointers are NULL before the graph is allocated). */
static ggml_rerope_attn_call call_from_tensors(const struct ggml_tensor * const * src, const ggml_rerope_params * p,
                                               int32_t k_hadamard) {
    const struct ggml_tensor *q = src[SRC_Q], *k = src[SRC_K], *qp = src[SRC_QPOS], *kp = src[SRC_KPOS];
    ggml_rerope_attn_call c;
    memset(&c, 0, sizeof c);
    c.params = *p;
    c.q = (const float *) q->data;
    c.k = k->data;
    c.v = src[SRC_V]->data;
    c.q_pos = qp ? (const int32_t *) qp->data : NULL;
    c.k_pos = kp ? (const int32_t *) kp->data : NULL;
    c.n_q = (int32_t) q->ne[2];
    c.n_head = (int32_t) q->ne[1];
    c.n_kv = (int32_t) k->ne[2];
    c.n_head_kv = (int32_t) k->ne[1];
    c.k_type = (int32_t) k->type; /* ggml_rerope_kv_type values are ggml's */
    c.v_type = (int32_t) src[SRC_V]->type;
    c.k_hadamard = k_hadamard;
    return c;
}

/* The job of the attention node whose sources are those of `node`. */
static void job_from_tensors(rerope_job * job, const struct ggml_tensor * node, const rr_node_state * s,
                             int allow_split) {
    const ggml_rerope_params * p = s->params;
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
    job->k_type = (int) k->type;
    job->v_type = (int) v->type;
    job->k_hadamard = s->k_hadamard;
    job->n_q = (int) q->ne[2];
    job->n_head = (int) q->ne[1];
    job->n_kv = (int) k->ne[2];
    job->n_head_kv = (int) k->ne[1];
    job->q_pos = qp ? (const int32_t *) qp->data : NULL;
    job->k_pos = kp ? (const int32_t *) kp->data : NULL;
    rerope_job_finish(job, allow_split);
}

/* Position values exist only now: every thread checks them (a scan of n_q + n_kv ints, small next
 * to the attention) so that none runs the kernel on a bad call. */
static int compute_time_check(const struct ggml_tensor * dst, rr_node_state * s) {
    const ggml_rerope_attn_call c =
        call_from_tensors((const struct ggml_tensor * const *) dst->src, s->params, s->k_hadamard);
    const ggml_rerope_status st = rerope_check_call(&c, RR_CHECK_POSITIONS);
    if (st == GGML_REROPE_OK) return 1;
    record_failure(s, st);
    return 0;
}

static void run_kernel(const rerope_job * job, int ith, int nth, rr_node_state * s) {
    const size_t bytes = rerope_workspace_bytes(job);
    void * ws = rerope_workspace_alloc(bytes);
    if (!ws) { /* this thread's rows stay unwritten; the record says why */
        rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "ggml_rerope_attn: cannot allocate %zu bytes of workspace", bytes);
        record_failure(s, GGML_REROPE_ERR_NO_MEMORY);
        return;
    }
    rerope_select_kernel()(job, ith, nth, ws);
    rerope_workspace_free(ws);
}

static void attn_forward(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    rr_node_state * s = (rr_node_state *) userdata;
    if (!compute_time_check(dst, s)) return;
    rerope_job job;
    job_from_tensors(&job, dst, s, 0);
    job.out = (char *) dst->data;
    job.o_nb_head = dst->nb[1];
    job.o_nb_tok = dst->nb[2];
    run_kernel(&job, ith, nth, s);
}

static void attn_partials(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    rr_node_state * s = (rr_node_state *) userdata;
    if (!compute_time_check(dst, s)) return;
    rerope_job job;
    job_from_tensors(&job, dst, s, 1);
    job.partials = (float *) dst->data; /* ne = {2 + dp, n_q * n_head, n_split} */
    run_kernel(&job, ith, nth, s);
}

static void attn_merge(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    /* the partials node has finished (ggml's barrier): a failure there is visible here */
    if (atomic_load(&((rr_node_state *) userdata)->failed)) return;
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

/* ggml keeps a custom op's function and userdata in the tensor's op_params (struct
 * ggml_custom_op_params of ggml-impl.h, not public). This mirror reads them back; ggml_rerope_attn
 * checks on every node it makes that the mirror reads what it passed, so a ggml that stores them
 * differently is refused when the node is built instead of misread after compute. */
struct rr_custom_op_params {
    ggml_custom_op_t fun;
    int n_tasks;
    void * userdata;
};
_Static_assert(sizeof(struct rr_custom_op_params) <= GGML_MAX_OP_PARAMS, "op_params too small");

static rr_node_state * state_of(const struct ggml_tensor * t) {
    if (!t || t->op != GGML_OP_CUSTOM) return NULL;
    struct rr_custom_op_params cp;
    memcpy(&cp, t->op_params, sizeof cp);
    if (cp.fun != attn_forward && cp.fun != attn_partials && cp.fun != attn_merge) return NULL;
    return (rr_node_state *) cp.userdata;
}

/* Reads and clears a record; sets the message when it holds a failure. */
static ggml_rerope_status take_status(rr_node_state * s) {
    if (!atomic_load(&s->failed)) return GGML_REROPE_OK;
    const ggml_rerope_status st = s->status;
    rerope_fail(st, "%s", s->message);
    s->status = GGML_REROPE_OK;
    atomic_store(&s->failed, 0);
    return st;
}

ggml_rerope_status ggml_rerope_node_status(const struct ggml_tensor * node) {
    rerope_clear_error();
    rr_node_state * s = state_of(node);
    if (!s) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "the tensor is not a ggml_rerope_attn node");
    return take_status(s);
}

ggml_rerope_status ggml_rerope_graph_status(struct ggml_cgraph * graph) {
    rerope_clear_error();
    if (!graph) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "graph is NULL");
    ggml_rerope_status first = GGML_REROPE_OK;
    char message[sizeof(((rr_node_state *) 0)->message)] = "";
    for (int i = 0; i < ggml_graph_n_nodes(graph); i++) {
        rr_node_state * s = state_of(ggml_graph_node(graph, i));
        if (!s) continue;
        const ggml_rerope_status st = take_status(s); /* clears every node's record, not only the first */
        if (st != GGML_REROPE_OK && first == GGML_REROPE_OK) {
            first = st;
            snprintf(message, sizeof message, "%s", ggml_rerope_last_error());
        }
    }
    if (first == GGML_REROPE_OK) {
        rerope_clear_error();
        return GGML_REROPE_OK;
    }
    return rerope_fail(first, "%s", message);
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

/* The type's name from ggml; whether the operator reads it at this head_dim is the shared
 * validator's rule (ggml_rerope_kv_type values are ggml's type ids). */
static int kv_ok(const struct ggml_tensor * t, const char * name, int64_t d) {
    if (ggml_rerope_kv_row_bytes((int32_t) t->type, 32) == 0) {
        rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                    "%s must be f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 or iq4_nl, got %s", name,
                    ggml_type_name(t->type));
        return 0;
    }
    if (t->ne[0] != d || t->ne[3] != 1 || t->nb[0] != ggml_type_size(t->type)) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s must be {d=%lld, n_head_kv, n_kv} with contiguous rows", name,
                    (long long) d);
        return 0;
    }
    return 1;
}

/* The tensor form of the inputs; the values (dims, params, positions rule) are the shared validator's. */
static int tensors_ok(const struct ggml_tensor * q, const struct ggml_tensor * k, const struct ggml_tensor * v,
                      const struct ggml_tensor * q_pos, const struct ggml_tensor * k_pos, int64_t d) {
    if (q->type != GGML_TYPE_F32) {
        rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "q must be F32, got %s", ggml_type_name(q->type));
        return 0;
    }
    if (q->ne[0] != d || q->ne[3] != 1 || q->nb[0] != sizeof(float)) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q must be {d=%lld, n_head, n_q} with contiguous rows, got ne0=%lld",
                    (long long) d, (long long) q->ne[0]);
        return 0;
    }
    if (!kv_ok(k, "k", d) || !kv_ok(v, "v", d)) return 0;
    if (k->ne[1] != v->ne[1] || k->ne[2] != v->ne[2]) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "k and v must have the same shape");
        return 0;
    }
    const int64_t dims[] = {q->ne[1], q->ne[2], k->ne[1], k->ne[2]};
    for (int i = 0; i < 4; i++) {
        if (dims[i] > INT32_MAX) {
            rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q/k/v dims must fit in int32, got %lld", (long long) dims[i]);
            return 0;
        }
    }
    return positions_ok(q_pos, q->ne[2], "q_pos") && positions_ok(k_pos, k->ne[2], "k_pos");
}

/* ggml aborts when its context is full; refuse before that instead. */
static int ctx_has_room(struct ggml_context * ctx, const rerope_job * job) {
    const size_t align = 64; /* above GGML_MEM_ALIGN and ggml's object header padding */
    size_t need = sizeof(rr_node_state) + 2 * align + 2 * ggml_tensor_overhead();
    if (!ggml_get_no_alloc(ctx)) {
        need += (size_t) job->d * job->n_head * job->n_q * sizeof(float) + align;
        need += rerope_partials_floats(job) * sizeof(float) + align;
    }
    const size_t size = ggml_get_mem_size(ctx), used = ggml_used_mem(ctx);
    if (used <= size && size - used >= need) return 1;
    rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "the ggml context has %zu bytes free; the attention node needs %zu",
                size - (used < size ? used : size), need);
    return 0;
}

struct ggml_tensor * ggml_rerope_attn_hadamard_k(struct ggml_context * ctx, struct ggml_tensor * q,
                                                 struct ggml_tensor * k, struct ggml_tensor * v,
                                                 struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
                                                 const ggml_rerope_params * params, int32_t k_hadamard) {
    if (ggml_rerope_check_params(params) != GGML_REROPE_OK) return NULL;
    if (!ctx || !q || !k || !v) {
        rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s is NULL", !ctx ? "ctx" : !q ? "q" : !k ? "k" : "v");
        return NULL;
    }
    const int64_t d = params->head_dim;
    if (!tensors_ok(q, k, v, q_pos, k_pos, d)) return NULL;
    struct ggml_tensor * args[5] = {q, k, v, q_pos, k_pos};
    const ggml_rerope_attn_call call = call_from_tensors((const struct ggml_tensor * const *) args, params, k_hadamard);
    if (rerope_check_call(&call, 0) != GGML_REROPE_OK) return NULL;

    rerope_job job;
    memset(&job, 0, sizeof job);
    job.p = *params;
    job.n_q = call.n_q;
    job.n_head = call.n_head;
    job.n_kv = call.n_kv;
    job.n_head_kv = call.n_head_kv;
    rerope_job_finish(&job, 1);
    if (!ctx_has_room(ctx, &job)) return NULL;

    rr_node_state * s = ggml_new_buffer(ctx, sizeof(rr_node_state));
    memset(s, 0, sizeof *s);
    s->params = params;
    s->k_hadamard = k_hadamard;
    atomic_init(&s->failed, 0);
    struct ggml_tensor * out;
    if (job.n_split == 0) {
        out =
            ggml_custom_4d(ctx, GGML_TYPE_F32, d, call.n_head, call.n_q, 1, args, 5, attn_forward, GGML_N_TASKS_MAX, s);
    } else {
        struct ggml_tensor * part = ggml_custom_4d(ctx, GGML_TYPE_F32, 2 + job.dp, (int64_t) call.n_q * call.n_head,
                                                   job.n_split, 1, args, 5, attn_partials, GGML_N_TASKS_MAX, s);
        if (!part || state_of(part) != s) out = part;
        else
            out = ggml_custom_4d(ctx, GGML_TYPE_F32, d, call.n_head, call.n_q, 1, &part, 1, attn_merge,
                                 GGML_N_TASKS_MAX, s);
    }
    if (out && state_of(out) != s) {
        rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "this ggml stores a custom op's userdata where ggml_rerope cannot "
                                                 "read it back (its node status would be lost)");
        return NULL;
    }
    return out;
}

struct ggml_tensor * ggml_rerope_attn(struct ggml_context * ctx, struct ggml_tensor * q, struct ggml_tensor * k,
                                      struct ggml_tensor * v, struct ggml_tensor * q_pos, struct ggml_tensor * k_pos,
                                      const ggml_rerope_params * params) {
    return ggml_rerope_attn_hadamard_k(ctx, q, k, v, q_pos, k_pos, params, 0);
}
