/* Memory plan: what each device will hold, from the GGUF's tensor table and the placement, so a model
 * that does not fit fails before any allocation with the device, the bytes needed and the bytes free.
 * Weights and KV bytes are exact (the tensors' sizes); the compute buffer is an estimate of the live
 * activations of one n_batch graph (the allocator's real size is printed once it is reserved). */
#include "rt_errors.h"
#include "rt_file.h"
#include "rt_hparams.h"
#include "rt_memory.h"
#include "rt_place.h"
#include "rt_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Which device a GGUF tensor goes to: its layer's, the head's, or the CPU's (embedding, factors). */
static int tensor_dev(const rt_placement * p, const char * name) {
    if (strncmp(name, "blk.", 4) == 0) {
        char * end = NULL;
        const long il = strtol(name + 4, &end, 10);
        return end != name + 4 && il >= 0 && il < p->n_layer ? p->layer_dev[il] : 0;
    }
    if (strcmp(name, "output.weight") == 0 || strcmp(name, "output_norm.weight") == 0) return p->output_dev;
    return 0;
}

static void plan_weights(const rt_placement * p, const rt_file * f, int64_t * w) {
    const int64_t n = gguf_get_n_tensors(f->gguf);
    for (int64_t i = 0; i < n; i++)
        w[tensor_dev(p, gguf_get_tensor_name(f->gguf, i))] += (int64_t) gguf_get_tensor_size(f->gguf, i);
    /* tied embeddings: a head on a GPU gets its own copy (the embedding stays on the host) */
    const int64_t emb = gguf_find_tensor(f->gguf, "token_embd.weight");
    if (gguf_find_tensor(f->gguf, "output.weight") < 0 && emb >= 0 && p->output_dev != 0)
        w[p->output_dev] += (int64_t) gguf_get_tensor_size(f->gguf, emb);
}

void rt_plan_make(const rt_placement * p, const rt_file * f, const ggml_rerope_model_info * I, const rt_hparams * hp,
                  int32_t n_ctx, int32_t n_batch, enum ggml_type type_k, enum ggml_type type_v, rt_memory_plan * out) {
    memset(out, 0, sizeof(*out));
    int64_t w[RT_MAX_DEVS] = {0};
    plan_weights(p, f, w);
    out->n_device = p->n_dev;
    const int64_t row = (int64_t) I->n_head_kv * I->head_dim;
    const int64_t kv_layer =
        n_ctx > 0 ? (int64_t) (ggml_row_size(type_k, row) + ggml_row_size(type_v, row)) * n_ctx : 0;
    const int64_t nb = n_ctx <= 0 ? 0 : n_batch < n_ctx ? n_batch : n_ctx;
    const int64_t nq = (int64_t) I->n_head * I->head_dim;
    /* live f32 rows per token inside a layer: residual, norm and FFN input; Q and the attention output;
     * K, V; gate, up and their product */
    const int64_t per_layer_act = 4 * nb * (3 * (int64_t) I->n_embd + 2 * nq + 2 * row + 3 * (int64_t) hp->n_ff);
    /* the n_vocab logit rows, on the head's device */
    const int64_t head_act = 4 * nb * ((int64_t) I->n_vocab + I->n_embd);
    for (int d = 0; d < p->n_dev; d++) {
        ggml_rerope_device_plan * dp = &out->device[d];
        snprintf(dp->name, sizeof(dp->name), "%s", p->name[d]);
        dp->is_gpu = p->is_gpu[d];
        dp->first_layer = -1;
        for (int32_t il = 0; il < p->n_layer; il++) {
            if (p->layer_dev[il] != d) continue;
            if (dp->first_layer < 0) dp->first_layer = il;
            dp->n_layers++;
        }
        if (dp->first_layer < 0) dp->first_layer = 0;
        dp->has_output = p->output_dev == d;
        dp->weight_bytes = w[d];
        dp->kv_bytes = kv_layer * dp->n_layers;
        dp->compute_bytes = (dp->n_layers > 0 ? per_layer_act : 0) + (dp->has_output ? head_act : 0) +
                            (d == 0 ? 4 * nb * (int64_t) I->n_embd : 0); /* the embedding rows */
        /* free now: a context's plan is checked after the weights took their share */
        dp->free_bytes = rt_place_gpu(p, d) ? (int64_t) rt_mem_available_on(rt_place_gpu(p, d)) : p->free_bytes[d];
        if (d == 0) dp->free_bytes = (int64_t) rt_mem_available_on(NULL);
        const int64_t need = dp->weight_bytes + dp->kv_bytes + dp->compute_bytes;
        dp->fits = dp->free_bytes == 0 || need <= dp->free_bytes;
    }
}

static void share_text(const ggml_rerope_device_plan * dp, char * buf, size_t n) {
    if (dp->n_layers > 0)
        snprintf(buf, n, "layers %d..%d%s", dp->first_layer, dp->first_layer + dp->n_layers - 1,
                 dp->has_output ? " and the output head" : "");
    else snprintf(buf, n, "%s", dp->has_output ? "the output head" : "the token embedding");
}

ggml_rerope_status rt_plan_check(const rt_memory_plan * plan, const char * what, bool with_weights) {
    for (int d = 1; d < plan->n_device; d++) {
        const ggml_rerope_device_plan * dp = &plan->device[d];
        const int64_t need = (with_weights ? dp->weight_bytes : 0) + dp->kv_bytes + dp->compute_bytes;
        if (!dp->is_gpu || dp->free_bytes == 0 || need <= dp->free_bytes) continue;
        char share[96];
        share_text(dp, share, sizeof(share));
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY,
                           "%s: %s cannot hold its share (%s): %lld bytes (%.1f MiB: weights %.1f, KV cache %.1f, "
                           "compute ~%.1f) needed, %lld bytes (%.1f MiB) free; offload fewer layers (n_gpu_layers), "
                           "a smaller n_ctx or a quantized KV cache",
                           what, dp->name, share, (long long) need, need / 1048576.0,
                           with_weights ? dp->weight_bytes / 1048576.0 : 0.0, dp->kv_bytes / 1048576.0,
                           dp->compute_bytes / 1048576.0, (long long) dp->free_bytes, dp->free_bytes / 1048576.0);
    }
    return GGML_REROPE_OK;
}

void rt_plan_print(const rt_memory_plan * plan) {
    for (int d = 0; d < plan->n_device; d++) {
        const ggml_rerope_device_plan * dp = &plan->device[d];
        char share[96];
        share_text(dp, share, sizeof(share));
        fprintf(stderr,
                "ggml_rerope: plan %-10s %-36s weights %8.1f MiB, KV %8.1f MiB, compute ~%7.1f MiB, free %9.1f MiB%s\n",
                dp->name, share, dp->weight_bytes / 1048576.0, dp->kv_bytes / 1048576.0, dp->compute_bytes / 1048576.0,
                dp->free_bytes / 1048576.0, dp->fits ? "" : "  DOES NOT FIT");
    }
}

ggml_rerope_status ggml_rerope_model_plan(const char * path, const ggml_rerope_model_params * mparams,
                                          const ggml_rerope_context_params * cparams, const int64_t * gpu_free,
                                          int32_t n_gpu, ggml_rerope_device_plan * out, int32_t max_out,
                                          int32_t * n_out) {
    rerope_clear_error();
    if (!path || !mparams || !cparams || !out || !n_out)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "path, mparams, cparams, out and n_out must not be NULL");
    *n_out = 0;
    if (gpu_free && (n_gpu < 1 || n_gpu > GGML_REROPE_MAX_DEVICES))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_gpu must be in 1..%d with gpu_free, got %d",
                           GGML_REROPE_MAX_DEVICES, n_gpu);
    for (int32_t i = 0; gpu_free && i < n_gpu; i++)
        if (gpu_free[i] < 0)
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "gpu_free[%d] = %lld must be >= 0", i,
                               (long long) gpu_free[i]);
    const ggml_rerope_model_params mp = *mparams;
    const ggml_rerope_context_params cp = *cparams;
    if (cp.n_ctx < 1 || cp.n_batch < 1)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_ctx and n_batch must be >= 1, got %d and %d", cp.n_ctx,
                           cp.n_batch);
    if (ggml_rerope_kv_row_bytes(cp.type_k, 32) <= 0 || ggml_rerope_kv_row_bytes(cp.type_v, 32) <= 0)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "type_k = %d / type_v = %d: not cache types", cp.type_k,
                           cp.type_v);
    rt_file f = {.fd = -1};
    ggml_rerope_model_info info;
    rt_hparams hp;
    memset(&info, 0, sizeof(info));
    ggml_rerope_status s = rt_file_open(&f, path, true);
    if (!s) s = rt_hparams_load(&f, &info, &hp);
    if (!s) {
        const int64_t emb = gguf_find_tensor(f.gguf, "token_embd.weight");
        if (emb < 0) s = rerope_fail(GGML_REROPE_ERR_IO, "%s: tensor 'token_embd.weight' is missing", path);
        else info.n_vocab = (int32_t) gguf_get_tensor_ne(f.gguf, emb)[1];
    }
    rt_placement p;
    memset(&p, 0, sizeof(p));
    if (!s && gpu_free) {
        char names[GGML_REROPE_MAX_DEVICES][32];
        const char * name[GGML_REROPE_MAX_DEVICES];
        for (int32_t i = 0; i < n_gpu; i++) {
            snprintf(names[i], sizeof(names[i]), "GPU%d", i);
            name[i] = names[i];
        }
        s = rt_place(&p, info.n_layer, &mp, n_gpu, NULL, gpu_free, name);
    } else if (!s) {
        s = rt_place_on_devices(&p, info.n_layer, &mp);
    }
    rt_memory_plan plan;
    if (!s)
        rt_plan_make(&p, &f, &info, &hp, cp.n_ctx, cp.n_batch, (enum ggml_type) cp.type_k, (enum ggml_type) cp.type_v,
                     &plan);
    if (!s && plan.n_device > max_out)
        s = rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "the plan has %d devices, out has room for %d", plan.n_device,
                        max_out);
    if (!s) {
        memcpy(out, plan.device, sizeof(plan.device[0]) * (size_t) plan.n_device);
        *n_out = plan.n_device;
    }
    rt_placement_free(&p);
    rt_file_close(&f);
    return s;
}
