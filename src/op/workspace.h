/* Kernel workspace memory, with a hook that makes allocations fail so tests can see how each
 * entry reports it. */
#ifndef GGML_REROPE_WORKSPACE_H
#define GGML_REROPE_WORKSPACE_H

#include "ggml_rerope.h"

#include <stddef.h>

/* 64-byte aligned block of at least `bytes` (rounded up to 64), or NULL. Free with rerope_workspace_free. */
void * rerope_workspace_alloc(size_t bytes);
void rerope_workspace_free(void * p);

/* Test hook (exported, not in the public header): the next `n` workspace allocations fail
 * (0 = none). Tests declare it themselves. */
GGML_REROPE_API void ggml_rerope_test_fail_allocs(int32_t n);

#endif
