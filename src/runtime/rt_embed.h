/* The host embedding layer (embed_host.c): token embedding rows gathered on the host into a graph
 * input, for graphs that run elsewhere (RT_ATTN_OUTSIDE). */
#ifndef GGML_REROPE_RT_EMBED_H
#define GGML_REROPE_RT_EMBED_H

#include "rt_model.h"

#include "ggml-alloc.h"

/* Its own state; zeroed = not started (rt_embed_free accepts it). */
typedef struct rt_host_embed {
    struct ggml_tensor * tok_embd; /* the model's, in host memory */
    ggml_backend_t cpu;            /* computes the lookup */
    void * mem;                    /* metadata of the lookup graph */
    size_t mem_size;
    ggml_gallocr_t galloc;         /* its rows, in host memory */
} rt_host_embed;

ggml_rerope_status rt_embed_init(rt_host_embed * e, struct ggml_tensor * tok_embd, ggml_backend_t cpu);
void rt_embed_free(rt_host_embed * e);
ggml_rerope_status rt_embed_tokens(rt_host_embed * e, const int32_t * tokens, int32_t n, struct ggml_tensor * dst);

#endif
