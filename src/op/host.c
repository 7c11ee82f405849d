/* ggml_rerope_attn_host: validation of every argument, then the kernel on our own
 * pthread fork/join (split-K decode: partials, join, merge). */
#include "errors.h"
#include "kernel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RR_MAX_THREADS 256

typedef struct {
    const rerope_job * job;
    rerope_kernel_fn kernel;
    char * ws;
    int ith, nth;
} host_task;

static void * host_worker(void * arg) {
    host_task * t = (host_task *) arg;
    t->kernel(t->job, t->ith, t->nth, t->ws);
    return NULL;
}

static ggml_rerope_status check_positions(const int32_t * pos, int32_t n, const char * name) {
    if (!pos) return GGML_REROPE_OK;
    for (int32_t i = 0; i < n; i++)
        if (pos[i] < 0) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "%s[%d] is %d; positions must be >= 0", name, i, pos[i]);
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_attn_host(const ggml_rerope_params * params, const float * q, int32_t n_q,
                                         int32_t n_head, const int32_t * q_pos, const void * k, const void * v,
                                         int32_t kv_type, int32_t n_kv, int32_t n_head_kv, const int32_t * k_pos,
                                         float * out, int32_t n_threads) {
    ggml_rerope_status st = ggml_rerope_check_params(params);
    if (st != GGML_REROPE_OK) return st;
    if (!q) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "q is NULL");
    if (!k) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "k is NULL");
    if (!v) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "v is NULL");
    if (!out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "out is NULL");
    if (n_q < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_q must be >= 1, got %d", n_q);
    if (n_kv < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_kv must be >= 1, got %d", n_kv);
    if (n_head < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head must be >= 1, got %d", n_head);
    if (n_head_kv < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head_kv must be >= 1, got %d", n_head_kv);
    if (n_head % n_head_kv != 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_head (%d) must be a multiple of n_head_kv (%d)", n_head,
                           n_head_kv);
    if (kv_type != GGML_REROPE_KV_F32 && kv_type != GGML_REROPE_KV_F16)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "kv_type must be F32 (0) or F16 (1), got %d", kv_type);
    if (!q_pos && n_q > n_kv)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG,
                           "q_pos is NULL but n_q (%d) > n_kv (%d): default query positions would be negative", n_q, n_kv);
    if ((st = check_positions(q_pos, n_q, "q_pos")) != GGML_REROPE_OK) return st;
    if ((st = check_positions(k_pos, n_kv, "k_pos")) != GGML_REROPE_OK) return st;

    rerope_job job;
    memset(&job, 0, sizeof job);
    job.p = *params;
    const size_t d = (size_t) params->head_dim, esz = kv_type == GGML_REROPE_KV_F16 ? 2 : 4;
    job.q = (const char *) q;
    job.q_nb_head = d * sizeof(float);
    job.q_nb_tok = d * sizeof(float) * (size_t) n_head;
    job.k = (const char *) k;
    job.v = (const char *) v;
    job.k_nb_head = job.v_nb_head = d * esz;
    job.k_nb_tok = job.v_nb_tok = d * esz * (size_t) n_head_kv;
    job.kv_f16 = kv_type == GGML_REROPE_KV_F16;
    job.n_q = n_q;
    job.n_head = n_head;
    job.n_kv = n_kv;
    job.n_head_kv = n_head_kv;
    job.q_pos = q_pos;
    job.k_pos = k_pos;
    job.out = (char *) out;
    job.o_nb_head = job.q_nb_head;
    job.o_nb_tok = job.q_nb_tok;
    rerope_job_finish(&job, 1);

    int nth = n_threads > 0 ? n_threads : (int) sysconf(_SC_NPROCESSORS_ONLN);
    const int n_items = job.n_split ? job.n_split : job.n_head_kv * job.n_qtiles;
    if (nth > n_items) nth = n_items;
    if (nth > RR_MAX_THREADS) nth = RR_MAX_THREADS;
    if (nth < 1) nth = 1;

    const size_t ws_bytes = (rerope_workspace_bytes(&job) + 63) & ~(size_t) 63;
    char * ws = aligned_alloc(64, ws_bytes * (size_t) nth);
    float * partials = NULL;
    if (job.n_split) partials = malloc(rerope_partials_floats(&job) * sizeof(float));
    if (!ws || (job.n_split && !partials)) {
        free(ws);
        free(partials);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate %zu bytes of kernel workspace",
                           ws_bytes * (size_t) nth);
    }
    job.partials = partials;

    host_task tasks[RR_MAX_THREADS];
    pthread_t threads[RR_MAX_THREADS];
    int started[RR_MAX_THREADS];
    const rerope_kernel_fn kernel = rerope_select_kernel();
    for (int t = 0; t < nth; t++) {
        tasks[t] = (host_task){&job, kernel, ws + ws_bytes * (size_t) t, t, nth};
        started[t] = t > 0 && pthread_create(&threads[t], NULL, host_worker, &tasks[t]) == 0;
    }
    host_worker(&tasks[0]);
    for (int t = 1; t < nth; t++) {
        if (started[t]) pthread_join(threads[t], NULL);
        else host_worker(&tasks[t]); /* no thread: do its share here */
    }
    if (job.n_split) rerope_merge_partials(&job, 0, 1);
    free(ws);
    free(partials);
    return GGML_REROPE_OK;
}
