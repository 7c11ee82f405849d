/* The attention placeholder (placeholder.c): the node where a layer's attention output goes when
 * attention runs outside the graph, and the node where activations change device. The graph builder makes it, the executor finds it; it sits
 * below both so neither depends on the other. Includes nothing of the runtime. */
#ifndef GGML_REROPE_RT_PLACEHOLDER_H
#define GGML_REROPE_RT_PLACEHOLDER_H

#include "ggml.h"

/* The node our kernel overwrites with layer il's attention output (F32 like q). */
struct ggml_tensor * rt_attn_placeholder(struct ggml_context * c, struct ggml_tensor * q, int il);
/* Layer of a placeholder, or -1 for any other node. */
int rt_placeholder_layer(const struct ggml_tensor * t);
/* The node where activations move from device `from` to the device of the nodes after it: the
 * executor copies its source into it instead of computing it. */
struct ggml_tensor * rt_copy_node(struct ggml_context * c, struct ggml_tensor * x, int from);
/* Device a copy node copies from, or -1 for any other node. */
int rt_copy_node_source(const struct ggml_tensor * t);

#endif
