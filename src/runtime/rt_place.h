/* The placement layer (placement.c): which device holds each layer, its weights and its KV rows,
 * decided once per model before anything is allocated. */
#ifndef GGML_REROPE_RT_PLACE_H
#define GGML_REROPE_RT_PLACE_H

#include "ggml_rerope_runtime.h"

#include "ggml-backend.h"

#include <stdbool.h>

#define RT_MAX_DEVS (GGML_REROPE_MAX_DEVICES + 1)

/* The devices of one model: dev 0 is the CPU (the token embedding, and the layers not offloaded),
 * then each GPU that holds a layer or the head, in ggml's order. */
typedef struct rt_placement {
    int32_t n_dev;
    ggml_backend_dev_t dev[RT_MAX_DEVS]; /* NULL: a what-if GPU (plans only)                      */
    bool is_gpu[RT_MAX_DEVS];
    bool stand_in;                       /* debug: the "GPUs" are the CPU (outside-split, below) */
    char name[RT_MAX_DEVS][32];
    int64_t free_bytes[RT_MAX_DEVS];     /* when placed; 0 = unknown                             */
    int32_t n_layer;
    int8_t * layer_dev;                  /* [n_layer]: index into dev                            */
    int8_t output_dev;
} rt_placement;

/* GGML_REROPE_RUNTIME_ATTN=outside-split[:N] (debug): N (default 1) CPU backends stand in for GPUs,
 * so the mixed placement's executor (pieces per device, copies between them) runs without one.
 * Returns N, or 0 when the variable asks for something else. */
int32_t rt_stand_in_gpus(void);

/* Places n_layer layers and the head (ggml_rerope_split_layers' rule) on n_gpu GPUs: gpu[i] (NULL:
 * what-if) with gpu_free[i] bytes free (0: unknown) and the name gpu_name[i]. Compacts the GPUs
 * that got nothing away. On failure the message is set and p holds nothing to free. */
ggml_rerope_status rt_place(rt_placement * p, int32_t n_layer, const ggml_rerope_model_params * mp, int32_t n_gpu,
                            ggml_backend_dev_t const * gpu, const int64_t * gpu_free, const char * const * gpu_name);
/* Places on the CUDA devices ggml sees (or the stand-ins); their absence is ERR_CUDA when layers are
 * asked for, with the message naming n_gpu_layers. */
ggml_rerope_status rt_place_on_devices(rt_placement * p, int32_t n_layer, const ggml_rerope_model_params * mp);
void rt_placement_free(rt_placement * p);

/* The device whose buffers hold dev d's tensors: the GPU's, or NULL for host memory (the CPU, a
 * stand-in, a what-if GPU). */
static inline ggml_backend_dev_t rt_place_gpu(const rt_placement * p, int d) {
    return p->is_gpu[d] && !p->stand_in ? p->dev[d] : NULL;
}
/* Any layer or the head on a GPU (or a stand-in)? */
static inline bool rt_place_offloaded(const rt_placement * p) { return p->n_dev > 1; }

#endif
