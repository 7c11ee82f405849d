/* One ggml graph per micro-batch, for llama / qwen2 / qwen3 (they differ only in optional pieces:
 * Q/K/V bias (qwen2), per-head q/k RMS norm (qwen3), the rope pair layout (NORM vs NEOX)):
 *
 *   embed -> [rms_norm -> Q,K,V (+bias) (+q/k norm) -> raw K,V into the cache
 *             -> attention over cache rows 0..n_past+n_tokens-1 -> out-proj + residual
 *             -> rms_norm -> SwiGLU FFN + residual] x n_layer -> rms_norm -> output head
 *
 * Only the rows whose logits are asked for go through the last layer's FFN and the output head
 * (get_rows after the last attention), as llama.cpp does.
 *
 * With attention outside the graph each layer's nodes belong to its device (the model's placement):
 * a copy node moves the residual stream where the device changes, each device has its own input of
 * cache rows, and every node and input is tagged with its device for the allocator and the executor. */
#include "rt_errors.h"
#include "rt_graph.h"
#include "rt_kv.h"
#include "rt_place.h"
#include "rt_placeholder.h"

#include <stdio.h>
#include <string.h>

/* A layer has ~40 nodes (9 more with a Hadamard-rotated cache), plus per span the views of Q, K, V and
 * positions, the attention node(s) and a concat. */
size_t rt_graph_max_nodes(const ggml_rerope_model * m, int32_t max_span) {
    return 1024 + (60 + 12 * (size_t) max_span) * (size_t) m->info.n_layer;
}

size_t rt_graph_mem_size(const ggml_rerope_model * m, int32_t max_span) {
    const size_t max_nodes = rt_graph_max_nodes(m, max_span);
    return ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false);
}

ggml_rerope_status rt_graph_inputs_init(rt_graph_inputs * in, const ggml_rerope_model * m, int32_t n_batch) {
    const rt_placement * pl = &m->place;
    memset(in, 0, sizeof(*in));
    for (int d = 0; d < pl->n_dev; d++) {
        struct ggml_init_params ip = {.mem_size = 3 * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
        if (!(in->ctx[d] = ggml_init(ip))) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for inputs");
    }
    for (int il = 0; il < pl->n_layer; il++) {
        const int d = pl->layer_dev[il];
        if (!in->kv_rows[d]) in->kv_rows[d] = ggml_new_tensor_1d(in->ctx[d], GGML_TYPE_I64, n_batch);
    }
    in->embd = ggml_new_tensor_2d(in->ctx[pl->layer_dev[0]], GGML_TYPE_F32, m->info.n_embd, n_batch);
    in->out_ids = ggml_new_tensor_1d(in->ctx[pl->layer_dev[pl->n_layer - 1]], GGML_TYPE_I32, n_batch);
    for (int d = 0; d < pl->n_dev; d++) {
        ggml_backend_dev_t gpu = rt_place_gpu(pl, d);
        if (!ggml_get_first_tensor(in->ctx[d])) continue; /* the head's device alone: no input */
        in->buf[d] = ggml_backend_alloc_ctx_tensors_from_buft(in->ctx[d], gpu ? ggml_backend_dev_buffer_type(gpu)
                                                                              : ggml_backend_cpu_buffer_type());
        if (!in->buf[d])
            return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the graph inputs on %s", pl->name[d]);
    }
    return GGML_REROPE_OK;
}

void rt_graph_inputs_free(rt_graph_inputs * in) {
    for (int d = 0; d < RT_MAX_DEVS; d++) {
        if (in->buf[d]) ggml_backend_buffer_free(in->buf[d]);
        if (in->ctx[d]) ggml_free(in->ctx[d]);
    }
    memset(in, 0, sizeof(*in));
}

/* The input of cache rows on device d: a view of the context's (pieces path), or a leaf. */
static struct ggml_tensor * kv_rows_on(struct ggml_context * c, const rt_graph_plan * plan, rt_graph * g, int d,
                                       int32_t n_tokens) {
    if (!g->kv_rows[d]) {
        if (plan->inputs) return g->kv_rows[d] = ggml_view_1d(c, plan->inputs->kv_rows[d], n_tokens, 0);
        g->kv_rows[d] = ggml_new_tensor_1d(c, GGML_TYPE_I64, n_tokens);
        ggml_set_input(g->kv_rows[d]);
    }
    return g->kv_rows[d];
}

/* node_slot from the node count at the end of each layer (layer_end); later nodes are the head's */
static void tag_devices(const rt_graph_plan * plan, rt_graph * g, const int * layer_end, int n_layer_built) {
    const rt_placement * pl = &plan->model->place;
    const int n = ggml_graph_n_nodes(g->gf);
    g->node_slot = plan->slot_mem;
    for (int i = 0, il = 0; i < n; i++) {
        while (il < n_layer_built && i >= layer_end[il]) il++;
        g->node_slot[i] = il < n_layer_built ? pl->layer_dev[il] : pl->output_dev;
    }
}

int32_t rt_batch_max_n_kv(const rt_batch_shape * sh) {
    int32_t n = 0;
    for (int32_t k = 0; k < sh->n_span; k++)
        if (rt_span_n_kv(&sh->span[k]) > n) n = rt_span_n_kv(&sh->span[k]);
    return n;
}

static struct ggml_tensor * rms_norm_mul(struct ggml_context * c, struct ggml_tensor * x, struct ggml_tensor * w,
                                         float eps) {
    return ggml_mul(c, ggml_rms_norm(c, x, eps), w);
}

/* H_b applied to each block of b = h->ne[0] elements of x (x contiguous): ggml_mul_mat(h, x) = h^T x with
 * H_b symmetric, hinted as a Hadamard matrix (as llama.cpp does), so ggml runs its fast Walsh-Hadamard
 * transform row by row (CPU and CUDA) instead of a GEMM: a row's result is then the same whatever the
 * batch, and a rounding that moved with the batch would move quantized cache values (a sequence's tokens
 * would depend on the others of its batch). */
static struct ggml_tensor * hadamard_blocks(struct ggml_context * c, struct ggml_tensor * x, struct ggml_tensor * h) {
    struct ggml_tensor * r = ggml_mul_mat(c, h, ggml_reshape_2d(c, x, h->ne[0], ggml_nelements(x) / h->ne[0]));
    ggml_mul_mat_set_hint(r, GGML_HINT_SRC0_IS_HADAMARD);
    return ggml_reshape_3d(c, r, x->ne[0], x->ne[1], x->ne[2]);
}

/* Debug cross-check path (GGML_REROPE_RUNTIME_ATTN=ggml): ggml's own rope + flash attention,
 * plain RoPE whatever the scheme. Keys are rotated from the raw cache at their positions. */
static struct ggml_tensor * attn_ggml(struct ggml_context * c, const rt_graph_plan * plan, rt_graph * g,
                                      const ggml_rerope_params * p, struct ggml_tensor * q, struct ggml_tensor * k,
                                      struct ggml_tensor * v) {
    const ggml_rerope_model_info * I = &plan->model->info;
    struct ggml_tensor * qr = ggml_rope_ext(c, q, g->q_pos, g->rope_freqs, p->n_rot, p->rope_mode, I->n_ctx_train,
                                            p->rope_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    struct ggml_tensor * kr = ggml_rope_ext(c, k, g->k_pos, g->rope_freqs, p->n_rot, p->rope_mode, I->n_ctx_train,
                                            p->rope_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    struct ggml_tensor * out = ggml_flash_attn_ext(c, ggml_permute(c, qr, 0, 2, 1, 3), ggml_permute(c, kr, 0, 2, 1, 3),
                                                   ggml_permute(c, v, 0, 2, 1, 3), g->kq_mask, p->scale, 0.0f, 0.0f);
    return out; /* {d, n_head, n_tokens} */
}

/* One span's attention: its queries (a run of rows of q) over its sequence's cache rows. */
static struct ggml_tensor * span_attention(struct ggml_context * c, const rt_graph_plan * plan, rt_graph * g,
                                           const rt_kv_span * sp, struct ggml_tensor * q, struct ggml_tensor * kc,
                                           struct ggml_tensor * vc) {
    const ggml_rerope_model_info * I = &plan->model->info;
    const int64_t hd = I->head_dim;
    const int32_t n_kv = rt_span_n_kv(sp);
    const ggml_rerope_params * p = &plan->attn[sp->seq];
    struct ggml_tensor * qs = q;
    if (sp->n_new != q->ne[2])
        qs = ggml_view_3d(c, q, hd, I->n_head, sp->n_new, q->nb[1], q->nb[2], sp->tok0 * q->nb[2]);
    struct ggml_tensor * k = ggml_view_3d(c, kc, hd, I->n_head_kv, n_kv, kc->nb[1], kc->nb[2], sp->kv_base * kc->nb[2]);
    struct ggml_tensor * v = ggml_view_3d(c, vc, hd, I->n_head_kv, n_kv, vc->nb[1], vc->nb[2], sp->kv_base * vc->nb[2]);
    if (plan->mode == RT_ATTN_GGML) return attn_ggml(c, plan, g, p, qs, k, v);
    struct ggml_tensor *qp = g->q_pos, *kp = g->k_pos;
    if (sp->n_new != qp->ne[0]) qp = ggml_view_1d(c, qp, sp->n_new, sp->tok0 * qp->nb[0]);
    if (n_kv != kp->ne[0]) kp = ggml_view_1d(c, kp, n_kv, 0);
    return ggml_rerope_attn_hadamard_k(c, qs, k, v, qp, kp, p, plan->kv->k_hadamard);
}

ggml_rerope_status rt_graph_build(const rt_graph_plan * plan, const rt_batch_shape * sh, rt_graph * g) {
    const ggml_rerope_model * m = plan->model;
    const ggml_rerope_model_info * I = &m->info;
    const rt_kv_cache * kv = plan->kv;
    const int32_t n_tokens = sh->n_tokens, n_kv = rt_batch_max_n_kv(sh);
    if (sh->n_span < 1 || sh->n_span > plan->max_span || (plan->mode == RT_ATTN_GGML && sh->n_span != 1))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "a graph of %d spans (this plan: 1..%d%s)", sh->n_span,
                           plan->max_span, plan->mode == RT_ATTN_GGML ? ", the ggml path: 1" : "");
    const int64_t hd = I->head_dim;
    const float eps = I->norm_eps;

    memset(g, 0, sizeof(*g));
    struct ggml_init_params ip = {.mem_size = plan->mem_size, .mem_buffer = plan->mem, .no_alloc = true};
    struct ggml_context * c = ggml_init(ip);
    if (!c) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the graph context");
    g->ctx = c;
    g->gf = ggml_new_graph_custom(c, rt_graph_max_nodes(m, plan->max_span), false);

    struct ggml_tensor * inp; /* {n_embd, n_tokens} */
    if (plan->mode == RT_ATTN_OUTSIDE) {
        /* the graph runs on one backend, the embedding is in host memory; the kernel outside the
         * graph uses its default positions */
        g->embd = ggml_view_2d(c, plan->inputs->embd, I->n_embd, n_tokens, plan->inputs->embd->nb[1], 0);
        inp = g->embd;
    } else {
        g->tokens = ggml_new_tensor_1d(c, GGML_TYPE_I32, n_tokens);
        g->q_pos = ggml_new_tensor_1d(c, GGML_TYPE_I32, n_tokens);
        g->k_pos = ggml_new_tensor_1d(c, GGML_TYPE_I32, n_kv);
        ggml_set_input(g->tokens);
        ggml_set_input(g->q_pos);
        ggml_set_input(g->k_pos);
        inp = ggml_get_rows(c, m->tok_embd, g->tokens);
    }
    const bool outside = plan->mode == RT_ATTN_OUTSIDE;
    const rt_placement * pl = &m->place;
    /* node count at the end of each layer, after the node_slot part of slot_mem */
    int * layer_end = outside ? plan->slot_mem + rt_graph_max_nodes(m, plan->max_span) : NULL;
    int n_built = 0, dev = outside ? pl->layer_dev[0] : 0;
    if (!outside) kv_rows_on(c, plan, g, 0, n_tokens);
    if (sh->n_out > 0 && sh->n_out < n_tokens) {
        g->out_ids = plan->inputs ? ggml_view_1d(c, plan->inputs->out_ids, sh->n_out, 0)
                                  : ggml_new_tensor_1d(c, GGML_TYPE_I32, sh->n_out);
        if (!plan->inputs) ggml_set_input(g->out_ids);
    }
    if (plan->mode == RT_ATTN_GGML) {
        g->kq_mask = ggml_new_tensor_2d(c, GGML_TYPE_F16, n_kv, n_tokens);
        ggml_set_input(g->kq_mask);
        if (m->freq_factors) {
            g->rope_freqs = ggml_new_tensor_1d(c, GGML_TYPE_F32, I->n_rot / 2);
            ggml_set_input(g->rope_freqs);
        }
    }

    for (int il = 0; il < I->n_layer; il++) {
        const rt_layer * l = &m->layers[il];
        const bool last = il == I->n_layer - 1;
        if (outside && pl->layer_dev[il] != dev) {
            inp = rt_copy_node(c, inp, dev);
            dev = pl->layer_dev[il];
        }
        struct ggml_tensor * rows = kv_rows_on(c, plan, g, dev, n_tokens);
        struct ggml_tensor * cur = rms_norm_mul(c, inp, l->attn_norm, eps);

        struct ggml_tensor * q = ggml_mul_mat(c, l->wq, cur);
        struct ggml_tensor * k = ggml_mul_mat(c, l->wk, cur);
        struct ggml_tensor * v = ggml_mul_mat(c, l->wv, cur);
        if (l->bq) q = ggml_add(c, q, l->bq);
        if (l->bk) k = ggml_add(c, k, l->bk);
        if (l->bv) v = ggml_add(c, v, l->bv);
        q = ggml_reshape_3d(c, q, hd, I->n_head, n_tokens);
        k = ggml_reshape_3d(c, k, hd, I->n_head_kv, n_tokens);
        v = ggml_reshape_3d(c, v, hd, I->n_head_kv, n_tokens);
        if (l->q_norm) q = rms_norm_mul(c, q, l->q_norm, eps);
        if (l->k_norm) k = rms_norm_mul(c, k, l->k_norm, eps);

        /* Raw K, V into cache rows n_past.. (set_rows with the rows as an input, as llama.cpp: the graph
         * of a decode step is then the same at every step, so ggml-cuda can replay it as a CUDA graph);
         * expanded first so they run before the attention reads. */
        struct ggml_tensor *kc = kv->k[il], *vc = kv->v[il];
        const int ld = pl->layer_dev[il];
        if (kv->k_hadamard) k = hadamard_blocks(c, k, kv->hk[ld]);
        if (kv->v_hadamard) v = hadamard_blocks(c, v, kv->hv[ld]);
        const int64_t row = hd * I->n_head_kv;
        ggml_build_forward_expand(g->gf, ggml_set_rows(c, ggml_reshape_2d(c, kc, row, kv->n_ctx),
                                                       ggml_reshape_2d(c, k, row, n_tokens), rows));
        ggml_build_forward_expand(g->gf, ggml_set_rows(c, ggml_reshape_2d(c, vc, row, kv->n_ctx),
                                                       ggml_reshape_2d(c, v, row, n_tokens), rows));
        if (last && sh->n_out == 0) { /* only the cache was needed from this batch */
            if (outside) layer_end[n_built++] = ggml_graph_n_nodes(g->gf);
            break;
        }

        struct ggml_tensor * att = NULL;
        if (plan->mode == RT_ATTN_OUTSIDE) { /* reads the cache itself, span by span */
            att = rt_attn_placeholder(c, q, il);
        } else {
            for (int32_t is = 0; is < sh->n_span && (is == 0 || att); is++) {
                struct ggml_tensor * a = span_attention(c, plan, g, &sh->span[is], q, kc, vc);
                att = !a ? NULL : is == 0 ? a : ggml_concat(c, att, a, 2);
            }
        }
        if (!att) {
            ggml_free(c);
            g->ctx = NULL;
            return rerope_fail_in(GGML_REROPE_ERR_INVALID_ARG, "layer %d: attention node", il);
        }
        if (kv->v_hadamard) att = hadamard_blocks(c, att, kv->hv[ld]); /* the output of rotated values is rotated */
        cur = ggml_mul_mat(c, l->wo, ggml_reshape_2d(c, att, hd * I->n_head, n_tokens));
        if (last && g->out_ids) {
            cur = ggml_get_rows(c, cur, g->out_ids);
            inp = ggml_get_rows(c, inp, g->out_ids);
        }
        struct ggml_tensor * ffn_inp = ggml_add(c, cur, inp);
        cur = rms_norm_mul(c, ffn_inp, l->ffn_norm, eps);
        struct ggml_tensor * gate = ggml_mul_mat(c, l->ffn_gate, cur);
        struct ggml_tensor * up = ggml_mul_mat(c, l->ffn_up, cur);
        cur = ggml_mul_mat(c, l->ffn_down, ggml_swiglu_split(c, gate, up));
        inp = ggml_add(c, cur, ffn_inp);
        if (outside) {
            ggml_build_forward_expand(g->gf, inp);
            layer_end[n_built++] = ggml_graph_n_nodes(g->gf);
        }
    }
    if (sh->n_out > 0) {
        if (outside && pl->output_dev != dev) inp = rt_copy_node(c, inp, dev);
        struct ggml_tensor * cur = rms_norm_mul(c, inp, m->output_norm, eps);
        g->logits = ggml_mul_mat(c, m->output, cur); /* {n_vocab, n_out} */
        ggml_set_output(g->logits);
        ggml_build_forward_expand(g->gf, g->logits);
    }
    if (outside) tag_devices(plan, g, layer_end, n_built);
    return GGML_REROPE_OK;
}
