/* Failures inside ggml's compute of the attention node reach the caller: a workspace allocation
 * that fails (forced through the test hook) and a negative position, each seen through
 * ggml_rerope_node_status and ggml_rerope_graph_status with the host entry's status, for the
 * prefill node and the split-K (partials + merge) pair. Exit status 0 = pass. */
#include "ggml_rerope.h"

#include <ggml-cpu.h>
#include <ggml.h>
#include <stdio.h>
#include <string.h>

void ggml_rerope_test_fail_allocs(int32_t n); /* src/op/workspace.h, exported for tests */

enum { D = 64, H = 4, H_KV = 2 };

static int fails = 0;

static void expect(int ok, const char * what) {
    printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) fails++;
}

typedef struct {
    struct ggml_context * ctx;
    struct ggml_tensor *out, *k_pos;
    struct ggml_cgraph * graph;
} node_graph;

static node_graph make_graph(int n_q, int n_kv, const ggml_rerope_params * p) {
    node_graph g;
    struct ggml_init_params ip = {.mem_size = 64u << 20, .mem_buffer = NULL, .no_alloc = false};
    g.ctx = ggml_init(ip);
    struct ggml_tensor * q = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F32, D, H, n_q);
    struct ggml_tensor * k = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F16, D, H_KV, n_kv);
    struct ggml_tensor * v = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F16, D, H_KV, n_kv);
    memset(q->data, 0, ggml_nbytes(q));
    memset(k->data, 0, ggml_nbytes(k));
    memset(v->data, 0, ggml_nbytes(v));
    g.k_pos = ggml_new_tensor_1d(g.ctx, GGML_TYPE_I32, n_kv);
    for (int j = 0; j < n_kv; j++) ((int32_t *) g.k_pos->data)[j] = j;
    g.out = ggml_rerope_attn(g.ctx, q, k, v, NULL, g.k_pos, p);
    g.graph = ggml_new_graph(g.ctx);
    if (g.out) ggml_build_forward_expand(g.graph, g.out);
    return g;
}

static void check_shape(int n_q, int n_kv, const char * name) {
    char what[160];
    ggml_rerope_params p = ggml_rerope_default_params(D);
    p.window = 16;
    node_graph g = make_graph(n_q, n_kv, &p);
    snprintf(what, sizeof what, "%s: node built", name);
    expect(g.out != NULL, what);
    if (!g.out) return;

    snprintf(what, sizeof what, "%s: a clean compute reports OK", name);
    expect(ggml_graph_compute_with_ctx(g.ctx, g.graph, 2) == GGML_STATUS_SUCCESS &&
               ggml_rerope_node_status(g.out) == GGML_REROPE_OK && ggml_rerope_graph_status(g.graph) == GGML_REROPE_OK,
           what);

    ggml_rerope_test_fail_allocs(1);
    const int gs = ggml_graph_compute_with_ctx(g.ctx, g.graph, 2);
    ggml_rerope_test_fail_allocs(0);
    const ggml_rerope_status st = ggml_rerope_node_status(g.out);
    snprintf(what, sizeof what, "%s: failed workspace allocation -> ERR_NO_MEMORY (ggml said %d) \"%s\"", name, gs,
             ggml_rerope_last_error());
    expect(st == GGML_REROPE_ERR_NO_MEMORY && strstr(ggml_rerope_last_error(), "workspace") != NULL, what);
    snprintf(what, sizeof what, "%s: reading the status cleared it", name);
    expect(ggml_rerope_node_status(g.out) == GGML_REROPE_OK, what);

    ggml_rerope_test_fail_allocs(1);
    ggml_graph_compute_with_ctx(g.ctx, g.graph, 2);
    ggml_rerope_test_fail_allocs(0);
    snprintf(what, sizeof what, "%s: ggml_rerope_graph_status sees it too", name);
    expect(ggml_rerope_graph_status(g.graph) == GGML_REROPE_ERR_NO_MEMORY &&
               strstr(ggml_rerope_last_error(), "workspace") != NULL,
           what);

    /* a negative key position: the node's message is the host entry's for the same call */
    ((int32_t *) g.k_pos->data)[3] = -5;
    ggml_graph_compute_with_ctx(g.ctx, g.graph, 2);
    const ggml_rerope_status node_st = ggml_rerope_graph_status(g.graph);
    char node_msg[512];
    snprintf(node_msg, sizeof node_msg, "%s", ggml_rerope_last_error());
    static float q[4096 * H * D], out[4096 * H * D];
    static uint16_t kv[4096 * H_KV * D];
    const ggml_rerope_attn_call call = {.params = p,
                                        .q = q,
                                        .k = kv,
                                        .v = kv,
                                        .out = out,
                                        .q_pos = NULL,
                                        .k_pos = (const int32_t *) g.k_pos->data,
                                        .n_q = n_q,
                                        .n_head = H,
                                        .n_kv = n_kv,
                                        .n_head_kv = H_KV,
                                        .k_type = GGML_REROPE_KV_F16,
                                        .v_type = GGML_REROPE_KV_F16};
    const ggml_rerope_status host_st = ggml_rerope_attn_host(&call, 2);
    snprintf(what, sizeof what, "%s: negative k_pos -> node \"%s\" == host \"%s\"", name, node_msg,
             ggml_rerope_last_error());
    expect(node_st == GGML_REROPE_ERR_INVALID_ARG && host_st == node_st &&
               strcmp(node_msg, ggml_rerope_last_error()) == 0,
           what);
    ggml_free(g.ctx);
}

int main(void) {
    check_shape(40, 300, "prefill node");
    check_shape(1, 2048, "split-K nodes");

    struct ggml_init_params ip = {.mem_size = 1u << 20, .mem_buffer = NULL, .no_alloc = false};
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * t = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4);
    expect(ggml_rerope_node_status(t) == GGML_REROPE_ERR_INVALID_ARG, "a tensor that is not our node is refused");
    ggml_free(ctx);

    /* a context too small for the node: NULL and ERR_NO_MEMORY, not ggml's abort */
    ggml_rerope_params p = ggml_rerope_default_params(D);
    /* room for q and k (2 KiB each) and a few hundred bytes: less than the node's tensor and record */
    struct ggml_init_params small = {
        .mem_size = 2 * (ggml_tensor_overhead() + 2048 + 64) + 256, .mem_buffer = NULL, .no_alloc = false};
    ctx = ggml_init(small);
    struct ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, 2);
    struct ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H_KV, 4);
    struct ggml_tensor * out = ggml_rerope_attn(ctx, q, k, k, NULL, NULL, &p);
    expect(out == NULL && strstr(ggml_rerope_last_error(), "bytes free") != NULL, "a full ggml context is refused");
    ggml_free(ctx);

    printf("%s (%d failures)\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}
