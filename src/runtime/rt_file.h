/* The loader layer: an opened GGUF file (gguf_loader.c) and its typed metadata reads
 * (gguf_meta.c). Includes nothing of the runtime. */
#ifndef GGML_REROPE_RT_FILE_H
#define GGML_REROPE_RT_FILE_H

#include "ggml_rerope_runtime.h"

#include "ggml.h"
#include "gguf.h"

#include <stdbool.h>
#include <stddef.h>

/* The opened file: gguf metadata plus the mapping of the whole file. */
typedef struct rt_file {
    char * path;
    struct gguf_context * gguf;
    void * map;       /* NULL when use_mmap = 0 */
    size_t size;      /* file size in bytes     */
    size_t data_offs; /* start of tensor data   */
    int fd;
} rt_file;

/* gguf_loader.c */
ggml_rerope_status rt_file_open(rt_file * f, const char * path, bool use_mmap);
void rt_file_close(rt_file * f);
/* Reads n bytes of a tensor's data (mapped or pread). */
ggml_rerope_status rt_file_read_tensor(const rt_file * f, int64_t tensor_id, void * dst, size_t n);
const void * rt_file_tensor_ptr(const rt_file * f, int64_t tensor_id);
/* Drops the mapped pages wholly inside [ptr, ptr + n) from this process (data copied elsewhere). */
void rt_file_release(const rt_file * f, const void * ptr, size_t n);
bool rt_type_is_matmul_weight(enum ggml_type type);

#endif
