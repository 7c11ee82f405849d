/* The token embedding looked up on the host, for graphs that run elsewhere (RT_ATTN_OUTSIDE):
 * the embedding matrix stays in host memory, as in llama.cpp, and only the n_tokens rows a
 * micro-batch needs are gathered (ggml's get_rows on the CPU threads) and copied to the graph's
 * input. */
#include "rt_embed.h"
#include "rt_errors.h"

#include <stdlib.h>

ggml_rerope_status rt_embed_init(rt_host_embed * e, struct ggml_tensor * tok_embd, ggml_backend_t cpu) {
    e->tok_embd = tok_embd;
    e->cpu = cpu;
    e->mem_size = 4 * ggml_tensor_overhead() + ggml_graph_overhead_custom(4, false);
    e->mem = malloc(e->mem_size);
    e->galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!e->mem || !e->galloc)
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the token embedding lookup");
    return GGML_REROPE_OK;
}

void rt_embed_free(rt_host_embed * e) {
    if (e->galloc) ggml_gallocr_free(e->galloc);
    free(e->mem);
}

ggml_rerope_status rt_embed_tokens(rt_host_embed * e, const int32_t * tokens, int32_t n, struct ggml_tensor * dst) {
    struct ggml_init_params ip = {.mem_size = e->mem_size, .mem_buffer = e->mem, .no_alloc = true};
    struct ggml_context * c = ggml_init(ip);
    if (!c) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot create the embedding graph");
    struct ggml_tensor * ids = ggml_new_tensor_1d(c, GGML_TYPE_I32, n);
    ggml_set_input(ids);
    struct ggml_tensor * rows = ggml_get_rows(c, e->tok_embd, ids); /* F32 {n_embd, n} */
    ggml_set_output(rows);
    struct ggml_cgraph * gf = ggml_new_graph_custom(c, 4, false);
    ggml_build_forward_expand(gf, rows);
    ggml_rerope_status s = GGML_REROPE_OK;
    if (!ggml_gallocr_alloc_graph(e->galloc, gf)) {
        s = rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "cannot allocate the embedding rows of %d tokens", n);
    } else {
        ggml_backend_tensor_set(ids, tokens, 0, sizeof(int32_t) * (size_t) n);
        if (ggml_backend_graph_compute(e->cpu, gf) != GGML_STATUS_SUCCESS)
            s = rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "the token embedding lookup failed");
        else ggml_backend_tensor_set(dst, rows->data, 0, ggml_nbytes(rows));
    }
    ggml_free(c);
    return s;
}
