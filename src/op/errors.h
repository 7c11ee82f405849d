/* Thread-local error messages shared by every part of the library. */
#ifndef GGML_REROPE_ERRORS_H
#define GGML_REROPE_ERRORS_H

#include "ggml_rerope.h"

/* Records a printf-style message for ggml_rerope_last_error() and returns status. */
ggml_rerope_status rerope_fail(ggml_rerope_status status, const char * fmt, ...) __attribute__((format(printf, 2, 3)));
/* Puts a printf-style context before the current message ("<context>: <message>") and
 * returns status: for a caller that passes on the failure of a call it made. */
ggml_rerope_status rerope_fail_in(ggml_rerope_status status, const char * fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears the message (called at the start of each public entry). */
void rerope_clear_error(void);

#endif
