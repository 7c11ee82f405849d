/* ISA-independent parts of the CPU kernel: derived job fields, workspace size,
 * and the split-K merge of partial softmax results. */
#include "kernel.h"

#include <math.h>
#include <string.h>

void rerope_hadamard_row(float * x, int n, int b) {
    const float norm = 1.0f / sqrtf((float) b);
    for (int h = 1; h < b; h *= 2)
        for (int i = 0; i < n; i++)
            if (!(i & h)) {
                const float a = x[i], c = x[i + h];
                x[i] = a + c;
                x[i + h] = a - c;
            }
    for (int i = 0; i < n; i++) x[i] *= norm;
}

void rerope_job_finish(rerope_job * job, int allow_split) {
    const ggml_rerope_params * p = &job->p;
    job->d = p->head_dim;
    job->dp = (int) rerope_round16((size_t) p->head_dim);
    job->n_rot = p->n_rot;
    job->half = p->n_rot / 2;
    job->scale = p->scale > 0.0f ? p->scale : (float) (1.0 / sqrt((double) p->head_dim));
    job->gq = job->n_head / job->n_head_kv;
    for (int m = 0; m < job->half; m++) {
        double th = pow((double) p->rope_base, -2.0 * m / (double) p->n_rot);
        if (p->freq_factors) th *= (double) p->freq_factors[m];
        job->theta[m] = th;
    }

    int tq = RR_ROWS_TARGET / job->gq;
    if (tq < 1) tq = 1;
    job->n_split = 0;
    job->split_keys = 0;
    if (allow_split && job->n_q <= RR_SPLIT_MAX_Q && job->n_kv >= 2 * RR_SPLIT_KEYS) {
        int ns = (job->n_kv + RR_SPLIT_KEYS - 1) / RR_SPLIT_KEYS;
        if (ns > RR_SPLIT_MAX) ns = RR_SPLIT_MAX;
        int per = (job->n_kv + ns - 1) / ns;
        per = (per + RR_BK - 1) / RR_BK * RR_BK;
        job->split_keys = per;
        job->n_split = (job->n_kv + per - 1) / per;
        tq = job->n_q;
    }
    if (tq > job->n_q) tq = job->n_q;
    job->tq = tq;
    job->n_qtiles = (job->n_q + tq - 1) / tq;
}

size_t rerope_workspace_bytes(const rerope_job * job) { return rerope_layout(job).total * sizeof(float); }

size_t rerope_partials_floats(const rerope_job * job) {
    return (size_t) job->n_split * job->n_q * job->n_head * (size_t) (2 + job->dp);
}

void rerope_merge_partials(const rerope_job * job, int ith, int nth) {
    const int n_rows = job->n_q * job->n_head, d = job->d;
    const size_t pitch = (size_t) (2 + job->dp);
    const int r0 = (int) ((long) n_rows * ith / nth), r1 = (int) ((long) n_rows * (ith + 1) / nth);
    for (int r = r0; r < r1; r++) {
        const int i = r / job->n_head, h = r % job->n_head;
        float * o = (float *) (job->out + (size_t) i * job->o_nb_tok + (size_t) h * job->o_nb_head);
        float mx = -INFINITY;
        for (int s = 0; s < job->n_split; s++) {
            const float * part = job->partials + ((size_t) s * n_rows + r) * pitch;
            if (part[1] > 0.0f && part[0] > mx) mx = part[0];
        }
        for (int c = 0; c < d; c++) o[c] = 0.0f;
        if (mx == -INFINITY) continue; /* no visible key */
        float l = 0.0f;
        for (int s = 0; s < job->n_split; s++) {
            const float * part = job->partials + ((size_t) s * n_rows + r) * pitch;
            if (!(part[1] > 0.0f)) continue;
            const float w = exp2f(part[0] - mx);
            l += w * part[1];
            for (int c = 0; c < d; c++) o[c] += w * part[2 + c];
        }
        const float inv = 1.0f / l;
        for (int c = 0; c < d; c++) o[c] *= inv;
    }
}
