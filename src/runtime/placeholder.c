/* A placeholder is a copy of Q named "rerope_attn-<layer>": GGML_OP_CONT, so every backend runs it
 * and the allocator never places it over Q, which the kernel still reads from its source. */
#include "rt_placeholder.h"

#include <stdio.h>
#include <string.h>

#define PLACEHOLDER_PREFIX "rerope_attn-"
#define COPY_PREFIX "rerope_copy_from-"

struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il) {
    struct ggml_tensor * t = ggml_cont(c, q);
    ggml_format_name(t, PLACEHOLDER_PREFIX "%d", il);
    return t;
}

int rt_placeholder_layer(const struct ggml_tensor * t) {
    if (t->op != GGML_OP_CONT || strncmp(t->name, PLACEHOLDER_PREFIX, sizeof(PLACEHOLDER_PREFIX) - 1) != 0) return -1;
    int il = -1;
    return sscanf(t->name + sizeof(PLACEHOLDER_PREFIX) - 1, "%d", &il) == 1 ? il : -1;
}

/* Also a GGML_OP_CONT: a new tensor of x's shape that the allocator places on the next device. */
struct ggml_tensor * rt_copy_node(struct ggml_context * c, struct ggml_tensor * x, int from) {
    struct ggml_tensor * t = ggml_cont(c, x);
    ggml_format_name(t, COPY_PREFIX "%d", from);
    return t;
}

int rt_copy_node_source(const struct ggml_tensor * t) {
    if (t->op != GGML_OP_CONT || strncmp(t->name, COPY_PREFIX, sizeof(COPY_PREFIX) - 1) != 0) return -1;
    int d = -1;
    return sscanf(t->name + sizeof(COPY_PREFIX) - 1, "%d", &d) == 1 ? d : -1;
}
