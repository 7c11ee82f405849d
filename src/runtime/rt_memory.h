/* Free memory where an allocation goes (memory.c). A leaf: it includes nothing of the runtime. */
#ifndef GGML_REROPE_RT_MEMORY_H
#define GGML_REROPE_RT_MEMORY_H

#include "ggml-backend.h"

#include <stddef.h>

/* Bytes still free on dev (NULL: the host's MemAvailable), or 0 when unknown. */
size_t rt_mem_available_on(ggml_backend_dev_t dev);

#endif
