/* ggml_rerope_attn_host: the shared validation (check_call.c), then the kernel on our own
 * pthread fork/join (split-K decode: partials, join, merge). */
#include "check_call.h"
#include "errors.h"
#include "kernel.h"
#include "workspace.h"

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

ggml_rerope_status ggml_rerope_attn_host(const ggml_rerope_attn_call * call, int32_t n_threads) {
    const ggml_rerope_status st = rerope_check_call(call, RR_CHECK_BUFFERS | RR_CHECK_POSITIONS);
    if (st != GGML_REROPE_OK) return st;

    rerope_job job;
    memset(&job, 0, sizeof job);
    job.p = call->params;
    const size_t d = (size_t) call->params.head_dim;
    const size_t k_row = ggml_rerope_kv_row_bytes(call->k_type, call->params.head_dim);
    const size_t v_row = ggml_rerope_kv_row_bytes(call->v_type, call->params.head_dim);
    job.q = (const char *) call->q;
    job.q_nb_head = d * sizeof(float);
    job.q_nb_tok = d * sizeof(float) * (size_t) call->n_head;
    job.k = (const char *) call->k;
    job.v = (const char *) call->v;
    job.k_nb_head = k_row;
    job.k_nb_tok = k_row * (size_t) call->n_head_kv;
    job.v_nb_head = v_row;
    job.v_nb_tok = v_row * (size_t) call->n_head_kv;
    job.k_type = call->k_type;
    job.k_hadamard = call->k_hadamard;
    job.v_type = call->v_type;
    job.n_q = call->n_q;
    job.n_head = call->n_head;
    job.n_kv = call->n_kv;
    job.n_head_kv = call->n_head_kv;
    job.q_pos = call->q_pos;
    job.k_pos = call->k_pos;
    job.out = (char *) call->out;
    job.o_nb_head = job.q_nb_head;
    job.o_nb_tok = job.q_nb_tok;
    rerope_job_finish(&job, 1);

    int nth = n_threads > 0 ? n_threads : (int) sysconf(_SC_NPROCESSORS_ONLN);
    const int n_items = job.n_split ? job.n_split : job.n_head_kv * job.n_qtiles;
    if (nth > n_items) nth = n_items;
    if (nth > RR_MAX_THREADS) nth = RR_MAX_THREADS;
    if (nth < 1) nth = 1;

    const size_t ws_bytes = (rerope_workspace_bytes(&job) + 63) & ~(size_t) 63;
    char * ws = rerope_workspace_alloc(ws_bytes * (size_t) nth);
    float * partials = NULL;
    if (ws && job.n_split) partials = rerope_workspace_alloc(rerope_partials_floats(&job) * sizeof(float));
    if (!ws || (job.n_split && !partials)) {
        rerope_workspace_free(ws);
        rerope_workspace_free(partials);
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
    rerope_workspace_free(ws);
    rerope_workspace_free(partials);
    return GGML_REROPE_OK;
}
