/* Opens a GGUF file: checks it is one, reads its metadata with ggml's gguf API (no tensor data),
 * checks every tensor's data range against the file size, and maps the file. */
#define _DEFAULT_SOURCE
#define _FILE_OFFSET_BITS 64
#include "errors.h"
#include "rt_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static ggml_rerope_status check_magic(const char * path, int fd, size_t size) {
    unsigned char magic[4] = {0};
    if (size < 4 || pread(fd, magic, 4, 0) != 4)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: not a GGUF file (%zu bytes, too short for the header)", path, size);
    if (memcmp(magic, "GGUF", 4) != 0)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: not a GGUF file (magic bytes %02x %02x %02x %02x, expected 'GGUF')",
                           path, magic[0], magic[1], magic[2], magic[3]);
    return GGML_REROPE_OK;
}

/* Every tensor's data must lie inside the file: a truncated download fails here, not in a kernel. */
static ggml_rerope_status check_ranges(const rt_file * f) {
    const int64_t n = gguf_get_n_tensors(f->gguf);
    for (int64_t i = 0; i < n; i++) {
        const size_t offs = gguf_get_tensor_offset(f->gguf, i);
        const size_t nbytes = gguf_get_tensor_size(f->gguf, i);
        const size_t begin = f->data_offs + offs;
        if (begin < f->data_offs || begin + nbytes < begin || begin + nbytes > f->size) {
            return rerope_fail(
                GGML_REROPE_ERR_IO,
                "%s: truncated or corrupt: tensor '%s' data spans bytes %zu..%zu but the file has %zu bytes", f->path,
                gguf_get_tensor_name(f->gguf, i), begin, begin + nbytes, f->size);
        }
    }
    return GGML_REROPE_OK;
}

ggml_rerope_status rt_file_open(rt_file * f, const char * path, bool use_mmap) {
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) return rerope_fail(GGML_REROPE_ERR_NO_MEMORY, "out of memory copying the path");

    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return rerope_fail(GGML_REROPE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0) return rerope_fail(GGML_REROPE_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return rerope_fail(GGML_REROPE_ERR_IO, "%s: not a regular file", path);
    f->size = (size_t) st.st_size;

    ggml_rerope_status s = check_magic(path, f->fd, f->size);
    if (s) return s;

    struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
    f->gguf = gguf_init_from_file(path, gp);
    if (!f->gguf)
        return rerope_fail(GGML_REROPE_ERR_IO,
                           "%s: corrupt or truncated GGUF metadata (ggml's gguf reader rejected the header, key/values "
                           "or tensor infos)",
                           path);
    f->data_offs = gguf_get_data_offset(f->gguf);
    if (f->data_offs > f->size)
        return rerope_fail(GGML_REROPE_ERR_IO, "%s: truncated: tensor data would start at byte %zu, file has %zu bytes",
                           path, f->data_offs, f->size);
    s = check_ranges(f);
    if (s) return s;

    if (use_mmap) {
        void * addr = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
        if (addr == MAP_FAILED) return rerope_fail(GGML_REROPE_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        f->map = addr;
    }
    return GGML_REROPE_OK;
}

void rt_file_close(rt_file * f) {
    if (f->map) munmap(f->map, f->size);
    if (f->gguf) gguf_free(f->gguf);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

const void * rt_file_tensor_ptr(const rt_file * f, int64_t tensor_id) {
    if (!f->map) return NULL;
    return (const char *) f->map + f->data_offs + gguf_get_tensor_offset(f->gguf, tensor_id);
}

void rt_file_release(const rt_file * f, const void * ptr, size_t n) {
    if (!f->map || n == 0) return;
    const long page_l = sysconf(_SC_PAGESIZE);
    const uintptr_t page = page_l > 0 ? (uintptr_t) page_l : 4096;
    const uintptr_t lo = ((uintptr_t) ptr + page - 1) / page * page, hi = ((uintptr_t) ptr + n) / page * page;
    if (hi > lo) madvise((void *) lo, hi - lo, MADV_DONTNEED); /* a hint: failure changes nothing */
}

ggml_rerope_status rt_file_read_tensor(const rt_file * f, int64_t tensor_id, void * dst, size_t n) {
    const void * src = rt_file_tensor_ptr(f, tensor_id);
    if (src) {
        memcpy(dst, src, n);
        return GGML_REROPE_OK;
    }
    off_t pos = (off_t) (f->data_offs + gguf_get_tensor_offset(f->gguf, tensor_id));
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(f->fd, (char *) dst + done, n - done, pos + (off_t) done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return rerope_fail(GGML_REROPE_ERR_IO, "%s: reading tensor '%s' failed: %s", f->path,
                               gguf_get_tensor_name(f->gguf, tensor_id),
                               r < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t) r;
    }
    return GGML_REROPE_OK;
}

/* Types ggml's CPU backend multiplies (mul_mat) and dequantizes (get_rows). */
bool rt_type_is_matmul_weight(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ4_XS:
        case GGML_TYPE_IQ1_M:
        case GGML_TYPE_TQ1_0:
        case GGML_TYPE_TQ2_0:
        case GGML_TYPE_MXFP4: return true;
        default: return false;
    }
}
