/* run_model: load a GGUF model with the ggml_rerope runtime, evaluate a list of token ids, print the
 * top logits of the last token.
 *
 *   run_model MODEL.gguf [-c N_CTX] [-t THREADS] [-w WINDOW] TOKEN [TOKEN ...]
 *
 * Token ids come from the model's tokenizer (e.g. llama-cpp-python's Llama.tokenize). */
#include "ggml_rerope_runtime.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char * what, ggml_rerope_status s) {
    fprintf(stderr, "%s: %s: %s\n", what, ggml_rerope_status_name(s), ggml_rerope_last_error());
    return 1;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf [-c N_CTX] [-t THREADS] [-w WINDOW] TOKEN [TOKEN ...]\n", argv[0]);
        return 2;
    }
    ggml_rerope_context_params cp = ggml_rerope_context_default_params();
    int32_t window = 0;
    int argi = 2;
    while (argi + 1 < argc && argv[argi][0] == '-') {
        if (strcmp(argv[argi], "-c") == 0) cp.n_ctx = atoi(argv[argi + 1]);
        else if (strcmp(argv[argi], "-t") == 0) cp.n_threads = atoi(argv[argi + 1]);
        else if (strcmp(argv[argi], "-w") == 0) window = atoi(argv[argi + 1]);
        else break;
        argi += 2;
    }
    const int n_tokens = argc - argi;
    if (n_tokens < 1) {
        fprintf(stderr, "no tokens given\n");
        return 2;
    }
    int32_t * tokens = malloc(sizeof(int32_t) * (size_t) n_tokens);
    if (!tokens) return 1;
    for (int i = 0; i < n_tokens; i++) tokens[i] = (int32_t) strtol(argv[argi + i], NULL, 10);

    ggml_rerope_model * model = NULL;
    ggml_rerope_status s = ggml_rerope_model_load(argv[1], NULL, &model);
    if (s) return fail("load", s);
    ggml_rerope_model_info info;
    ggml_rerope_model_get_info(model, &info);
    printf("%s: %s, %d layers, %d/%d heads of %d, vocab %d, trained context %d\n", argv[1], info.architecture,
           info.n_layer, info.n_head, info.n_head_kv, info.head_dim, info.n_vocab, info.n_ctx_train);

    ggml_rerope_context * ctx = NULL;
    s = ggml_rerope_context_new(model, &cp, &ctx);
    if (s) {
        ggml_rerope_model_free(model);
        return fail("context", s);
    }
    if (window > 0) {
        ggml_rerope_scheme sch = ggml_rerope_scheme_default(model);
        sch.window = window;
        s = ggml_rerope_context_set_scheme(ctx, &sch);
        if (s) return fail("scheme", s);
    }
    float * logits = malloc(sizeof(float) * (size_t) info.n_vocab);
    s = logits ? ggml_rerope_eval(ctx, tokens, n_tokens, logits, 0) : GGML_REROPE_ERR_NO_MEMORY;
    if (s) return fail("eval", s);

    printf("top logits after %d tokens:\n", n_tokens);
    for (int r = 0; r < 5 && r < info.n_vocab; r++) { /* partial selection: 5 passes */
        int best = -1;
        for (int i = 0; i < info.n_vocab; i++)
            if (logits[i] == logits[i] && (best < 0 || logits[i] > logits[best])) best = i;
        printf("  %6d  %8.4f\n", best, (double) logits[best]);
        logits[best] = NAN; /* skip it next pass */
    }
    free(logits);
    free(tokens);
    ggml_rerope_context_free(ctx);
    ggml_rerope_model_free(model);
    return 0;
}
