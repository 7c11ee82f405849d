/*
 * attention_graph: builds a ggml graph with the ReRoPE attention node, runs it on
 * ggml's CPU threads, and checks the result against a plain C loop of the math.
 *
 *   attention_graph [n_tokens] [window]     (exit code 0 when they agree)
 */
#include "ggml_rerope.h"

#include <ggml-cpu.h>
#include <ggml.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { HEAD_DIM = 64, N_HEAD = 4, N_HEAD_KV = 2 };

static float frand(unsigned * state) {
    *state = *state * 1664525u + 1013904223u;
    return (float) (*state >> 8) / (float) (1u << 24) * 2.0f - 1.0f;
}

/* <R_rel q, k> for NORM pairs (2m, 2m+1), in double. */
static double rotated_dot(const float * q, const float * k, double rel, double base) {
    double s = 0.0;
    for (int m = 0; m < HEAD_DIM / 2; m++) {
        double ang = rel * pow(base, -2.0 * m / HEAD_DIM);
        double qa = q[2 * m], qb = q[2 * m + 1];
        s += (qa * cos(ang) - qb * sin(ang)) * k[2 * m] + (qa * sin(ang) + qb * cos(ang)) * k[2 * m + 1];
    }
    return s;
}

/* Plain loop: every query row, every visible key, rel = min(i - j, w). */
static void reference(const float * q, const float * k, const float * v, int n, int window, double base, double * out) {
    double * p = malloc(sizeof(double) * (size_t) n);
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < N_HEAD; h++) {
            int hk = h / (N_HEAD / N_HEAD_KV);
            const float * qi = q + ((size_t) i * N_HEAD + h) * HEAD_DIM;
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j <= i; j++) {
                int rel = i - j < window ? i - j : window;
                p[j] = rotated_dot(qi, k + ((size_t) j * N_HEAD_KV + hk) * HEAD_DIM, rel, base) / sqrt(HEAD_DIM);
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
            double * o = out + ((size_t) i * N_HEAD + h) * HEAD_DIM;
            for (int c = 0; c < HEAD_DIM; c++) {
                double acc = 0.0;
                for (int j = 0; j <= i; j++) acc += p[j] * v[((size_t) j * N_HEAD_KV + hk) * HEAD_DIM + c];
                o[c] = acc / sum;
            }
        }
    }
    free(p);
}

int main(int argc, char ** argv) {
    int n = argc > 1 ? atoi(argv[1]) : 97;
    int window = argc > 2 ? atoi(argv[2]) : 16;
    if (n < 1 || window < 1) {
        fprintf(stderr, "usage: %s [n_tokens >= 1] [window >= 1]\n", argv[0]);
        return 2;
    }

    struct ggml_init_params ip = {
        .mem_size = (size_t) 64 * 1024 * 1024 + (size_t) n * 4096, .mem_buffer = NULL, .no_alloc = false};
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HEAD_DIM, N_HEAD, n);
    struct ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HEAD_DIM, N_HEAD_KV, n);
    struct ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HEAD_DIM, N_HEAD_KV, n);
    struct ggml_tensor * pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    unsigned state = 12345u;
    for (int64_t e = 0; e < ggml_nelements(q); e++) ((float *) q->data)[e] = frand(&state);
    for (int64_t e = 0; e < ggml_nelements(k); e++) ((float *) k->data)[e] = frand(&state);
    for (int64_t e = 0; e < ggml_nelements(v); e++) ((float *) v->data)[e] = frand(&state);
    for (int i = 0; i < n; i++) ((int32_t *) pos->data)[i] = i;

    ggml_rerope_params params = ggml_rerope_default_params(HEAD_DIM);
    params.window = window;
    params.rope_base = 10000.0f;
    struct ggml_tensor * out = ggml_rerope_attn(ctx, q, k, v, pos, pos, &params);
    if (!out) {
        fprintf(stderr, "ggml_rerope_attn: %s\n", ggml_rerope_last_error());
        return 1;
    }
    struct ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    if (ggml_graph_compute_with_ctx(ctx, graph, 2) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        return 1;
    }
    /* ggml's status does not cover a custom op: ask the node how its compute went */
    if (ggml_rerope_graph_status(graph) != GGML_REROPE_OK) {
        fprintf(stderr, "ggml_rerope_attn: %s\n", ggml_rerope_last_error());
        return 1;
    }

    size_t count = (size_t) n * N_HEAD * HEAD_DIM;
    double * ref = malloc(sizeof(double) * count);
    reference(q->data, k->data, v->data, n, window, 10000.0, ref);
    double err = 0.0, norm = 0.0;
    for (size_t e = 0; e < count; e++) {
        double diff = ((float *) out->data)[e] - ref[e];
        err += diff * diff;
        norm += ref[e] * ref[e];
    }
    double rel = sqrt(err / norm);
    printf("ReRoPE node in a ggml graph: n=%d window=%d heads=%d/%d d=%d relative error %.3g: %s\n", n, window, N_HEAD,
           N_HEAD_KV, HEAD_DIM, rel, rel < 1e-4 ? "OK" : "FAIL");
    free(ref);
    ggml_free(ctx);
    return rel < 1e-4 ? 0 : 1;
}
