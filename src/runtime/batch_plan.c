/* Micro-batch planning: which tokens a graph takes, grouped by sequence, and where they go. */
#include "rt_batch.h"
#include "rt_errors.h"

#include <stdlib.h>
#include <string.h>

ggml_rerope_status rt_ubatch_init(rt_ubatch * ub, int32_t n_batch, int32_t n_seq) {
    memset(ub, 0, sizeof(*ub));
    const size_t nb = (size_t) n_batch, ns = (size_t) n_seq;
    ub->span = malloc(sizeof(*ub->span) * (ns < nb ? ns : nb));
    ub->tokens = malloc(sizeof(int32_t) * nb);
    ub->pos = malloc(sizeof(int32_t) * nb);
    ub->rows = malloc(sizeof(int64_t) * nb);
    ub->out_rows = malloc(sizeof(int32_t) * nb);
    ub->out_dst = malloc(sizeof(int32_t) * nb);
    ub->row_src = malloc(sizeof(int32_t) * nb);
    ub->seq_slot = malloc(sizeof(int32_t) * ns);
    ub->fill = malloc(sizeof(int32_t) * (ns < nb ? ns : nb));
    ub->n_seq = n_seq;
    if (!ub->span || !ub->tokens || !ub->pos || !ub->rows || !ub->out_rows || !ub->out_dst || !ub->row_src ||
        !ub->seq_slot || !ub->fill) {
        rt_ubatch_free(ub);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for batch planning");
    }
    for (int32_t s = 0; s < n_seq; s++) ub->seq_slot[s] = -1;
    return GGML_REROPE_OK;
}

void rt_ubatch_free(rt_ubatch * ub) {
    free(ub->span);
    free(ub->tokens);
    free(ub->pos);
    free(ub->rows);
    free(ub->out_rows);
    free(ub->out_dst);
    free(ub->row_src);
    free(ub->seq_slot);
    free(ub->fill);
    memset(ub, 0, sizeof(*ub));
}

static int32_t seq_of(const rt_batch_in * in, int32_t i) { return in->seq_id ? in->seq_id[i] : 0; }

int32_t rt_ubatch_plan(rt_ubatch * ub, const rt_batch_in * in, int32_t off, int32_t n_batch, int32_t max_span,
                       const int32_t * n_past, int32_t n_ctx_seq) {
    /* Take tokens while they fit; a new sequence past max_span ends the micro-batch. */
    int32_t n = 0, n_span = 0;
    for (int32_t i = off; i < in->n_tokens && n < n_batch; i++, n++) {
        const int32_t s = seq_of(in, i);
        if (ub->seq_slot[s] >= 0) {
            ub->span[ub->seq_slot[s]].n_new++;
            continue;
        }
        if (n_span == max_span) break;
        ub->seq_slot[s] = n_span;
        ub->span[n_span++] =
            (rt_kv_span){.seq = s, .kv_base = s * n_ctx_seq, .n_past = n_past[s], .n_new = 1, .tok0 = 0};
    }
    for (int32_t k = 1; k < n_span; k++) ub->span[k].tok0 = ub->span[k - 1].tok0 + ub->span[k - 1].n_new;

    /* Place each token at its span's next row (a stable grouping: a sequence's order is kept). */
    for (int32_t k = 0; k < n_span; k++) ub->fill[k] = 0;
    for (int32_t j = 0; j < n; j++) {
        const int32_t k = ub->seq_slot[seq_of(in, off + j)];
        const rt_kv_span * sp = &ub->span[k];
        const int32_t r = sp->tok0 + ub->fill[k]++;
        ub->tokens[r] = in->tokens[off + j];
        ub->pos[r] = sp->n_past + (r - sp->tok0);
        ub->rows[r] = (int64_t) sp->kv_base + ub->pos[r];
        ub->row_src[r] = j;
    }
    /* Outputs in graph-row order, each with its row among the caller's logits. */
    ub->n_out = 0;
    for (int32_t r = 0; r < n; r++) {
        const int32_t d = in->out_idx[off + ub->row_src[r]];
        if (d < 0) continue;
        ub->out_rows[ub->n_out] = r;
        ub->out_dst[ub->n_out++] = d;
    }
    for (int32_t k = 0; k < n_span; k++) ub->seq_slot[ub->span[k].seq] = -1;
    ub->n_tokens = n;
    ub->n_span = n_span;
    return n;
}
