/* The batch layer (batch_plan.c): a caller's batch of tokens from several sequences cut into
 * micro-batches, one graph each. Inside a micro-batch the tokens are grouped by sequence (one span
 * per sequence, in the order the sequences first appear) so each sequence's attention reads one
 * contiguous run of queries and its own cache rows; the matmuls see all tokens at once. */
#ifndef GGML_REROPE_RT_BATCH_H
#define GGML_REROPE_RT_BATCH_H

#include "rt_kv.h"

/* One micro-batch, in graph order. The arrays are the planner's (sized at rt_ubatch_init). */
typedef struct rt_ubatch {
    int32_t n_tokens;
    int32_t n_span;
    rt_kv_span * span;  /* [n_span]                                              */
    int32_t * tokens;   /* [n_tokens]                                            */
    int32_t * pos;      /* [n_tokens] position of each token in its sequence     */
    int64_t * rows;     /* [n_tokens] cache row each token's K and V go to        */
    int32_t n_out;
    int32_t * out_rows; /* [n_out] graph rows whose logits are wanted, ascending  */
    int32_t * out_dst;  /* [n_out] where each goes among the caller's logit rows  */
    int32_t * row_src;  /* [n_tokens] the batch token (from off) of each graph row */
    int32_t * seq_slot; /* [n_seq] scratch: span of each sequence, -1 for none    */
    int32_t * fill;     /* [n_span] scratch: tokens placed per span               */
    int32_t n_seq;
} rt_ubatch;

/* A caller's batch, checked: tokens in the vocabulary, seq ids in 0..n_seq-1. */
typedef struct rt_batch_in {
    int32_t n_tokens;
    const int32_t * tokens;
    const int32_t * seq_id;  /* NULL: every token is sequence 0           */
    const int32_t * out_idx; /* [n_tokens]: its logit row, or -1 for none */
} rt_batch_in;

/* Arrays for micro-batches of up to n_batch tokens over n_seq sequences. */
ggml_rerope_status rt_ubatch_init(rt_ubatch * ub, int32_t n_batch, int32_t n_seq);
void rt_ubatch_free(rt_ubatch * ub);

/* Plans the micro-batch of the batch's tokens from `off` on: at most n_batch tokens and at most
 * max_span sequences. n_past[s] is sequence s's length before these tokens (not changed here), the
 * sequence's rows start at s * n_ctx_seq. Returns how many tokens of the batch it took (>= 1). */
int32_t rt_ubatch_plan(rt_ubatch * ub, const rt_batch_in * in, int32_t off, int32_t n_batch, int32_t max_span,
                       const int32_t * n_past, int32_t n_ctx_seq);

#endif
