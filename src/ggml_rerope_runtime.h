/* ggml_rerope_runtime.h - GGUF runtime (placeholder; filled in by the runtime work). */
#ifndef GGML_REROPE_RUNTIME_H
#define GGML_REROPE_RUNTIME_H
#include "ggml_rerope.h"
#endif
