#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char rerope_error_message[512];

ggml_rerope_status rerope_fail(ggml_rerope_status status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(rerope_error_message, sizeof(rerope_error_message), fmt, args);
    va_end(args);
    return status;
}

ggml_rerope_status rerope_fail_in(ggml_rerope_status status, const char * fmt, ...) {
    char why[sizeof(rerope_error_message)];
    snprintf(why, sizeof(why), "%s", rerope_error_message);
    va_list args;
    va_start(args, fmt);
    const int n = vsnprintf(rerope_error_message, sizeof(rerope_error_message), fmt, args);
    va_end(args);
    /* append ": <why>", cut to fit (a copy, not snprintf: the cut is intended) */
    size_t at = n < 0 ? 0 : (size_t) n;
    for (const char * p = ": "; *p && at + 1 < sizeof(rerope_error_message); p++) rerope_error_message[at++] = *p;
    for (const char * p = why; *p && at + 1 < sizeof(rerope_error_message); p++) rerope_error_message[at++] = *p;
    rerope_error_message[at < sizeof(rerope_error_message) ? at : sizeof(rerope_error_message) - 1] = '\0';
    return status;
}

void rerope_clear_error(void) { rerope_error_message[0] = '\0'; }

const char * ggml_rerope_last_error(void) { return rerope_error_message; }

const char * ggml_rerope_status_name(ggml_rerope_status status) {
    switch (status) {
        case GGML_REROPE_OK: return "ok";
        case GGML_REROPE_ERR_INVALID_ARG: return "invalid argument";
        case GGML_REROPE_ERR_UNSUPPORTED: return "unsupported";
        case GGML_REROPE_ERR_NO_MEMORY: return "out of memory";
        case GGML_REROPE_ERR_CUDA: return "CUDA error";
        case GGML_REROPE_ERR_IO: return "I/O error";
        case GGML_REROPE_ERR_CONTEXT_FULL: return "context full";
    }
    return "unknown status";
}
