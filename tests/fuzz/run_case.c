/* One case in the child process: load the file, read everything the model exposes, make a small
 * context and evaluate a few tokens (a prefill of two micro-batches, then one decode step).
 * Every failure must be a status with a message: that is a clean error; anything else is a bug. */
#include "fuzz.h"
#include "ggml_rerope_runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed(case_report * rep, ggml_rerope_status s) {
    rep->status = s;
    const char * msg = ggml_rerope_last_error();
    snprintf(rep->message, sizeof(rep->message), "%s", msg ? msg : "");
    /* a clean error names its cause; a success status here, or no message, is a bug of the library */
    if (s == GGML_REROPE_OK || !msg || !msg[0]) return EXIT_CASE_BAD_ERROR;
    return EXIT_CASE_ERROR;
}

int run_model_file(const char * path, int use_mmap, case_report * rep) {
    rep->stage = STAGE_LOAD;
    ggml_rerope_model_params mp = ggml_rerope_model_default_params();
    mp.use_mmap = use_mmap;
    ggml_rerope_model * model = NULL;
    ggml_rerope_status s = ggml_rerope_model_load(path, &mp, &model);
    if (s || !model) return failed(rep, s);

    ggml_rerope_model_info info;
    ggml_rerope_rope_info rope;
    if ((s = ggml_rerope_model_get_info(model, &info)) || (s = ggml_rerope_model_get_rope_info(model, &rope)))
        return failed(rep, s);
    const int has[3] = {rope.has_rope_freqs, rope.has_factors_long, rope.has_factors_short};
    float factors[256];
    for (int i = 0; i < 3; i++) {
        if (!has[i] || rope.n_factors > 256) continue;
        if ((s = ggml_rerope_model_get_rope_factors(model, i, factors, rope.n_factors))) return failed(rep, s);
    }

    rep->stage = STAGE_CONTEXT;
    ggml_rerope_context_params cp = ggml_rerope_context_default_params();
    cp.n_ctx = 8;
    cp.n_batch = 2;
    cp.n_threads = 1;
    ggml_rerope_context * ctx = NULL;
    if ((s = ggml_rerope_context_new(model, &cp, &ctx)) || !ctx) return failed(rep, s);

    rep->stage = STAGE_EVAL;
    const int32_t nv = info.n_vocab;
    const int32_t tokens[3] = {0, nv - 1, nv / 2};
    float * logits = malloc(sizeof(float) * (size_t) (nv > 0 ? nv : 1));
    if (!logits) return failed(rep, GGML_REROPE_ERR_NO_MEMORY);
    if ((s = ggml_rerope_eval(ctx, tokens, 3, logits, 0))) return failed(rep, s);
    const int32_t next = nv > 1 ? 1 : 0;
    if ((s = ggml_rerope_eval(ctx, &next, 1, logits, 0))) return failed(rep, s);
    free(logits);
    ggml_rerope_context_free(ctx);
    ggml_rerope_model_free(model);
    rep->stage = STAGE_DONE;
    return EXIT_CASE_OK;
}
