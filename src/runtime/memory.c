/* How much memory is still free where an allocation goes, so a too-large cache or model fails
 * with a message first: on the host, MemAvailable from /proc/meminfo (Linux; overcommit would
 * hide it until first touch); on a GPU, what its ggml device reports free. */
#define _DEFAULT_SOURCE
#include "rt_memory.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

size_t rt_mem_available_on(ggml_backend_dev_t dev) {
    if (dev) {
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(dev, &free_b, &total_b);
        return free_b;
    }
    FILE * f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb = 0;
        int found = 0;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                found = 1;
                break;
            }
        }
        fclose(f);
        if (found) return (size_t) kb * 1024;
    }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (size_t) pages * (size_t) page;
#endif
    return 0;
}
