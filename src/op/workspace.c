#include "workspace.h"

#include <stdatomic.h>
#include <stdlib.h>

static _Atomic int32_t rerope_allocs_to_fail = 0;

void ggml_rerope_test_fail_allocs(int32_t n) { atomic_store(&rerope_allocs_to_fail, n > 0 ? n : 0); }

/* Takes one injected failure if any is left (threads may race for the last one: only one wins). */
static int take_injected_failure(void) {
    int32_t left = atomic_load(&rerope_allocs_to_fail);
    while (left > 0)
        if (atomic_compare_exchange_weak(&rerope_allocs_to_fail, &left, left - 1)) return 1;
    return 0;
}

void * rerope_workspace_alloc(size_t bytes) {
    if (take_injected_failure()) return NULL;
    return aligned_alloc(64, (bytes + 63) & ~(size_t) 63);
}

void rerope_workspace_free(void * p) { free(p); }
