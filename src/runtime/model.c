/* Public model entries: load (file -> hyperparameters -> weights), free, info. */
#include "errors.h"
#include "ggml-cpu.h"
#include "rt_file.h"
#include "rt_hparams.h"
#include "rt_model.h"
#include "rt_place.h"

#include <stdlib.h>
#include <string.h>

ggml_rerope_model_params ggml_rerope_model_default_params(void) {
    ggml_rerope_model_params p = {.n_gpu_layers = 0,
                                  .use_mmap = 1,
                                  .split_mode = GGML_REROPE_SPLIT_MODE_LAYER,
                                  .main_gpu = 0,
                                  .tensor_split = {0}};
    return p;
}

void ggml_rerope_model_free(ggml_rerope_model * m) {
    if (!m) return;
    rt_weights_free(m);
    rt_placement_free(&m->place);
    rt_file_close(&m->file);
    free(m);
}

ggml_rerope_status ggml_rerope_model_load(const char * path, const ggml_rerope_model_params * params,
                                          ggml_rerope_model ** out) {
    rerope_clear_error();
    if (!out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!path || !path[0]) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "path is NULL or empty");
    ggml_rerope_model_params p = params ? *params : ggml_rerope_model_default_params();
    if (p.n_gpu_layers < -1)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_gpu_layers must be >= -1, got %d", p.n_gpu_layers);

    ggml_rerope_model * m = calloc(1, sizeof(*m));
    if (!m) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory for the model");
    m->file.fd = -1;
    ggml_rerope_status s = rt_file_open(&m->file, path, p.use_mmap != 0);
    if (!s) s = rt_hparams_load(&m->file, &m->info, &m->hp);
    if (!s) s = rt_rope_info_load(&m->file, &m->info, &m->rope_info);
    if (!s) {
        ggml_backend_reg_t reg = ggml_backend_cpu_reg();
        m->cpu_dev = reg && ggml_backend_reg_dev_count(reg) > 0 ? ggml_backend_reg_dev_get(reg, 0) : NULL;
        if (!m->cpu_dev) s = rerope_fail(GGML_REROPE_ERR_UNSUPPORTED, "ggml has no CPU device");
    }
    if (!s) s = rt_place_on_devices(&m->place, m->info.n_layer, &p);
    if (!s) s = rt_weights_load(m, p.use_mmap != 0); /* checks the plan before it allocates */
    if (s) {
        ggml_rerope_model_free(m);
        return s;
    }
    *out = m;
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_model_get_info(const ggml_rerope_model * m, ggml_rerope_model_info * out) {
    rerope_clear_error();
    if (!m || !out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "model and out must not be NULL");
    *out = m->info;
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_model_get_rope_info(const ggml_rerope_model * m, ggml_rerope_rope_info * out) {
    rerope_clear_error();
    if (!m || !out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "model and out must not be NULL");
    *out = m->rope_info;
    return GGML_REROPE_OK;
}

ggml_rerope_status ggml_rerope_model_get_rope_factors(const ggml_rerope_model * m, int32_t which, float * out,
                                                      int32_t n) {
    static const char * const names[3] = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"};
    rerope_clear_error();
    if (!m || !out) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "model and out must not be NULL");
    if (which < GGML_REROPE_FACTORS_ROPE_FREQS || which > GGML_REROPE_FACTORS_SHORT)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "which must be 0 (rope_freqs), 1 (long) or 2 (short), got %d",
                           which);
    if (!m->rope_factors[which])
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "the model has no tensor %s", names[which]);
    if (n != m->rope_info.n_factors)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n must be n_factors = %d, got %d", m->rope_info.n_factors, n);
    memcpy(out, m->rope_factors[which], sizeof(float) * (size_t) n);
    return GGML_REROPE_OK;
}

ggml_rerope_scheme ggml_rerope_scheme_default(const ggml_rerope_model * m) {
    ggml_rerope_scheme s;
    memset(&s, 0, sizeof(s));
    const int32_t L = m ? m->info.n_ctx_train : 0;
    s.window = L >= 2 ? L / 2 : 1;
    s.far_mode = GGML_REROPE_FAR_CLAMP;
    s.leaky_k = 1.0f;
    s.group_size = 1;
    s.logn_train_len = L >= 2 ? L : 0;
    s.rope_base = 0.0f;
    s.freq_factors = NULL;
    s.attn_factor = 1.0f;
    s.chunk_len = 0;
    s.sliding_window = 0;
    s.sink_tokens = 0;
    return s;
}
