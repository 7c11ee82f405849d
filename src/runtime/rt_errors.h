/* Runtime errors: the operator's error module (errors.h: rerope_fail, the message) plus the one
 * mapping of a ggml compute status to ours. A leaf: it includes nothing of the runtime. */
#ifndef GGML_REROPE_RT_ERRORS_H
#define GGML_REROPE_RT_ERRORS_H

#include "errors.h"
#include "ggml.h"

/* A ggml compute status as ours (the message set on failure). */
ggml_rerope_status rt_compute_status(enum ggml_status gs);

#endif
