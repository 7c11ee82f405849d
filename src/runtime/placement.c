/* Layer placement, llama.cpp's rule (llama-model.cpp, load_tensors): the layers, then the output
 * head as one more layer, and the last n_gpu_layers of those on the GPUs; the offloaded run is cut
 * into one run per GPU at the cumulative shares of tensor_split (or of the GPUs' free memory), so
 * the same -ngl / -ts / -sm place a model here exactly as there. The token embedding is always the
 * CPU's (llama.cpp: "very little benefit to offloading the input layer"). */
#include "ggml-cpu.h"
#include "rt_errors.h"
#include "rt_memory.h"
#include "rt_place.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ggml_rerope_status ggml_rerope_split_layers(int32_t n_layer, int32_t n_gpu_layers, int32_t split_mode, int32_t main_gpu,
                                            int32_t n_gpu, const float * split, int32_t * dev) {
    rerope_clear_error();
    if (!dev) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "dev is NULL");
    if (n_layer < 1) return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_layer must be >= 1, got %d", n_layer);
    if (n_gpu_layers < -1)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_gpu_layers must be >= -1, got %d", n_gpu_layers);
    if (split_mode < GGML_REROPE_SPLIT_MODE_NONE || split_mode > GGML_REROPE_SPLIT_MODE_ROW)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "split_mode must be 0 (none), 1 (layer) or 2 (row), got %d",
                           split_mode);
    if (n_gpu < 0 || n_gpu > GGML_REROPE_MAX_DEVICES)
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "n_gpu must be in 0..%d, got %d", GGML_REROPE_MAX_DEVICES,
                           n_gpu);
    for (int32_t il = 0; il <= n_layer; il++) dev[il] = -1;
    if (n_gpu_layers == 0) return GGML_REROPE_OK;
    if (split_mode == GGML_REROPE_SPLIT_MODE_ROW)
        return rerope_fail(GGML_REROPE_ERR_UNSUPPORTED,
                           "split_mode row (each matrix split by rows over the GPUs) is not supported: use layer "
                           "(runs of layers per GPU) or none");
    if (n_gpu == 0)
        return rerope_fail(GGML_REROPE_ERR_CUDA, "n_gpu_layers = %d asks for a GPU, but there is none", n_gpu_layers);
    if (split_mode == GGML_REROPE_SPLIT_MODE_NONE && (main_gpu < 0 || main_gpu >= n_gpu))
        return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "main_gpu = %d, but there %s %d GPU%s (0..%d)", main_gpu,
                           n_gpu == 1 ? "is" : "are", n_gpu, n_gpu == 1 ? "" : "s", n_gpu - 1);
    double cum[GGML_REROPE_MAX_DEVICES], sum = 0.0;
    for (int32_t i = 0; i < n_gpu; i++) {
        const double s = split ? (double) split[i] : 0.0;
        if (!(s >= 0.0) || !isfinite(s))
            return rerope_fail(GGML_REROPE_ERR_INVALID_ARG, "tensor_split[%d] = %g must be finite and >= 0", i, s);
        sum += s;
        cum[i] = sum;
    }
    for (int32_t i = 0; i < n_gpu; i++) cum[i] = sum > 0.0 ? cum[i] / sum : (double) (i + 1) / n_gpu;

    const int32_t n_all = n_layer + 1; /* the head is layer n_layer */
    const int32_t act = n_gpu_layers < 0 || n_gpu_layers > n_all ? n_all : n_gpu_layers;
    const int32_t first = n_all - act;
    for (int32_t il = first; il < n_all; il++) {
        if (split_mode == GGML_REROPE_SPLIT_MODE_NONE) {
            dev[il] = main_gpu;
            continue;
        }
        /* llama.cpp: upper_bound(splits, (il - first) / act), the first cut above this layer's place */
        const double x = (double) (il - first) / act;
        int32_t g = 0;
        while (g < n_gpu - 1 && cum[g] <= x) g++;
        dev[il] = g;
    }
    return GGML_REROPE_OK;
}

int32_t rt_stand_in_gpus(void) {
    const char * v = getenv("GGML_REROPE_RUNTIME_ATTN");
    static const char prefix[] = "outside-split";
    if (!v || strncmp(v, prefix, sizeof(prefix) - 1) != 0) return 0;
    const char * rest = v + sizeof(prefix) - 1;
    if (!*rest) return 1;
    const int n = *rest == ':' ? atoi(rest + 1) : 0;
    return n >= 1 && n <= GGML_REROPE_MAX_DEVICES ? n : 0;
}

void rt_placement_free(rt_placement * p) {
    free(p->layer_dev);
    memset(p, 0, sizeof(*p));
}

ggml_rerope_status rt_place(rt_placement * p, int32_t n_layer, const ggml_rerope_model_params * mp, int32_t n_gpu,
                            ggml_backend_dev_t const * gpu, const int64_t * gpu_free, const char * const * gpu_name) {
    memset(p, 0, sizeof(*p));
    int32_t * where = malloc(sizeof(int32_t) * (size_t) (n_layer + 1));
    p->layer_dev = malloc((size_t) n_layer > 0 ? (size_t) n_layer : 1);
    if (!where || !p->layer_dev) {
        free(where);
        rt_placement_free(p);
        return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory placing %d layers", n_layer);
    }
    /* default shares: each GPU's free memory (llama.cpp's), equal when none is known */
    float share[GGML_REROPE_MAX_DEVICES];
    bool all_zero = true;
    for (int32_t i = 0; i < n_gpu && i < GGML_REROPE_MAX_DEVICES; i++) all_zero = all_zero && mp->tensor_split[i] == 0;
    for (int32_t i = 0; i < n_gpu && i < GGML_REROPE_MAX_DEVICES; i++)
        share[i] = all_zero ? (float) (gpu_free ? gpu_free[i] : 0) : mp->tensor_split[i];
    ggml_rerope_status s =
        ggml_rerope_split_layers(n_layer, mp->n_gpu_layers, mp->split_mode, mp->main_gpu, n_gpu, share, where);
    if (s) {
        free(where);
        rt_placement_free(p);
        return s;
    }
    /* dev 0: the CPU; then every GPU that got something, in order */
    int8_t index[GGML_REROPE_MAX_DEVICES];
    p->n_dev = 1;
    p->dev[0] = NULL;
    snprintf(p->name[0], sizeof(p->name[0]), "CPU");
    p->free_bytes[0] = (int64_t) rt_mem_available_on(NULL);
    for (int32_t g = 0; g < n_gpu; g++) {
        index[g] = -1;
        for (int32_t il = 0; il <= n_layer && index[g] < 0; il++)
            if (where[il] == g) index[g] = (int8_t) p->n_dev;
        if (index[g] < 0) continue;
        const int d = p->n_dev++;
        p->dev[d] = gpu ? gpu[g] : NULL;
        p->is_gpu[d] = true;
        p->free_bytes[d] = gpu_free ? gpu_free[g] : 0;
        snprintf(p->name[d], sizeof(p->name[d]), "%s", gpu_name ? gpu_name[g] : "GPU");
    }
    p->n_layer = n_layer;
    for (int32_t il = 0; il < n_layer; il++) p->layer_dev[il] = where[il] < 0 ? 0 : index[where[il]];
    p->output_dev = where[n_layer] < 0 ? 0 : index[where[n_layer]];
    free(where);
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_place_on_devices(rt_placement * p, int32_t n_layer, const ggml_rerope_model_params * mp) {
    ggml_backend_dev_t gpu[GGML_REROPE_MAX_DEVICES];
    int64_t free_b[GGML_REROPE_MAX_DEVICES];
    char names[GGML_REROPE_MAX_DEVICES][32];
    const char * name[GGML_REROPE_MAX_DEVICES];
    int32_t n_gpu = 0;
    const int32_t stand_in = rt_stand_in_gpus();
    if (stand_in > 0) {
        ggml_backend_reg_t reg = ggml_backend_cpu_reg();
        ggml_backend_dev_t cpu = reg && ggml_backend_reg_dev_count(reg) > 0 ? ggml_backend_reg_dev_get(reg, 0) : NULL;
        for (; n_gpu < stand_in; n_gpu++) {
            gpu[n_gpu] = cpu;
            free_b[n_gpu] = 0; /* host memory, checked as the host's: equal shares by default */
            snprintf(names[n_gpu], sizeof(names[n_gpu]), "stand-in%d", n_gpu);
            name[n_gpu] = names[n_gpu];
        }
    } else if (mp->n_gpu_layers != 0) {
        for (size_t i = 0; i < ggml_backend_dev_count() && n_gpu < GGML_REROPE_MAX_DEVICES; i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(d) != GGML_BACKEND_DEVICE_TYPE_GPU ||
                strncmp(ggml_backend_dev_name(d), "CUDA", 4))
                continue;
            gpu[n_gpu] = d;
            free_b[n_gpu] = (int64_t) rt_mem_available_on(d);
            snprintf(names[n_gpu], sizeof(names[n_gpu]), "%s", ggml_backend_dev_name(d));
            name[n_gpu] = names[n_gpu];
            n_gpu++;
        }
        if (n_gpu == 0)
            return rerope_fail(GGML_REROPE_ERR_CUDA,
                               "n_gpu_layers = %d asks for the GPU, but ggml (llama-cpp-python's libggml) sees no CUDA "
                               "device: it needs an NVIDIA GPU and llama-cpp-python built with "
                               "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or use n_gpu_layers = 0)",
                               mp->n_gpu_layers);
        if (!ggml_rerope_cuda_available())
            return rerope_fail(GGML_REROPE_ERR_CUDA,
                               "n_gpu_layers = %d asks for the GPU, but this libggml_rerope has no CUDA kernels "
                               "(rebuild it with nvcc on the PATH, GGML_REROPE_CUDA=ON)",
                               mp->n_gpu_layers);
    }
    ggml_rerope_status s = rt_place(p, n_layer, mp, n_gpu, gpu, free_b, name);
    if (!s) p->stand_in = stand_in > 0;
    return s;
}
