/* How much memory the system can still give: MemAvailable from /proc/meminfo (Linux), so a
 * too-large cache fails with a message instead of being hidden by overcommit until first touch. */
#define _DEFAULT_SOURCE
#include "rt_internal.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

size_t rt_mem_available(void) {
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
