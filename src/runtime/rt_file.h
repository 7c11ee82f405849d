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

/* gguf_meta.c: typed metadata reads. Each looks at the key's type (an array's element type and
 * length too) before any ggml gguf accessor, which aborts on a mismatch; a wrong type is ERR_IO
 * naming the key, the type found and the type expected. An absent key: *found = false, OK. */
/* Any integer type; per_layer > 0 also accepts an integer array of exactly per_layer equal values. */
ggml_rerope_status rt_meta_int(const rt_file * f, const char * key, int64_t per_layer, bool * found, int64_t * out);
/* float32 or float64. */
ggml_rerope_status rt_meta_float(const rt_file * f, const char * key, bool * found, double * out);
ggml_rerope_status rt_meta_str(const rt_file * f, const char * key, bool * found, const char ** out);
/* An array of strings: its length. */
ggml_rerope_status rt_meta_str_array_len(const rt_file * f, const char * key, bool * found, int64_t * n);

#endif
