/* Public model entries: load (file -> hyperparameters -> weights), free, info. */
#include "errors.h"
#include "ggml-cpu.h"
#include "rt_file.h"
#include "rt_hparams.h"
#include "rt_model.h"

#include <stdlib.h>
#include <string.h>

ggml_rerope_model_params ggml_rerope_model_default_params(void) {
    ggml_rerope_model_params p = {.n_gpu_layers = 0, .use_mmap = 1};
    return p;
}

void ggml_rerope_model_free(ggml_rerope_model * m) {
    if (!m) return;
    rt_weights_free(m);
    rt_file_close(&m->file);
    free(m);
}

/* n_gpu_layers != 0: the CUDA device of ggml (llama-cpp-python's libggml) for the whole model. */
static ggml_rerope_status pick_gpu(ggml_rerope_model * m, int32_t n_gpu_layers) {
    if (n_gpu_layers == 0) return GGML_REROPE_OK;
    const int32_t n_layer = m->info.n_layer;
    if (n_gpu_layers > 0 && n_gpu_layers < n_layer)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "n_gpu_layers = %d would split the %d layers between CPU and GPU, which is not "
                           "supported: use 0 (CPU) or -1 (everything on the GPU)",
                           n_gpu_layers, n_layer);
    for (size_t i = 0; i < ggml_backend_dev_count() && !m->gpu_dev; i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU &&
            strncmp(ggml_backend_dev_name(d), "CUDA", 4) == 0)
            m->gpu_dev = d;
    }
    if (!m->gpu_dev)
        return rerope_fail(GGML_REROPE_ERR_CUDA,
                           "n_gpu_layers = %d asks for the GPU, but ggml (llama-cpp-python's libggml) sees no CUDA "
                           "device: it needs an NVIDIA GPU and llama-cpp-python built with "
                           "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or use n_gpu_layers = 0)",
                           n_gpu_layers);
    if (!ggml_rerope_cuda_available())
        return rerope_fail(GGML_REROPE_ERR_CUDA,
                           "n_gpu_layers = %d asks for the GPU, but this libggml_rerope has no CUDA kernels "
                           "(rebuild it with nvcc on the PATH, GGML_REROPE_CUDA=ON)",
                           n_gpu_layers);
    return GGML_REROPE_OK;
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
    if (!s) s = pick_gpu(m, p.n_gpu_layers);
    if (!s) s = rt_weights_load(m, p.use_mmap != 0);
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
    return s;
}
