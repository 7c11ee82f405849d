/* The memory plan layer (mem_plan.c): each device's bytes (weights, KV cache, compute) for a placement,
 * computed from the GGUF's tensor table before anything is allocated, printed and checked against
 * each device's free memory. */
#ifndef GGML_REROPE_RT_PLAN_H
#define GGML_REROPE_RT_PLAN_H

#include "rt_hparams.h"
#include "rt_place.h"

typedef struct rt_memory_plan {
    int32_t n_device; /* as the placement's devices */
    ggml_rerope_device_plan device[RT_MAX_DEVS];
} rt_memory_plan;

/* The plan of a placed model; n_ctx 0 = weights only (no context yet). */
void rt_plan_make(const rt_placement * p, const rt_file * f, const ggml_rerope_model_info * info, const rt_hparams * hp,
                  int32_t n_ctx, int32_t n_batch, enum ggml_type type_k, enum ggml_type type_v, rt_memory_plan * out);
/* ERR_NO_MEMORY naming the first GPU that cannot hold its share, the bytes needed and the bytes free.
 * with_weights false: the weights are already there (free memory counts them). Host memory is the
 * weights' and KV cache's own checks. */
ggml_rerope_status rt_plan_check(const rt_memory_plan * plan, const char * what, bool with_weights);
/* One line per device on stderr (GGML_REROPE_VERBOSE). */
void rt_plan_print(const rt_memory_plan * plan);

#endif
