/* The attention placeholder (placeholder.c): the node where a layer's attention output goes when
 * attention runs outside the graph. The graph builder makes it, the executor finds it; it sits
 * below both so neither depends on the other. Includes nothing of the runtime. */
#ifndef GGML_REROPE_RT_PLACEHOLDER_H
#define GGML_REROPE_RT_PLACEHOLDER_H

#include "ggml.h"

/* The node our kernel overwrites with layer il's attention output (F32 like q). */
struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il);
/* Layer of a placeholder, or -1 for any other node. */
int rt_placeholder_layer(const struct ggml_tensor * t);

#endif
