/* fuzz_gguf: feeds mutants of small valid GGUFs to the runtime, one child process per case.
 *
 *   fuzz_gguf --kind byte|semantic --seeds a.gguf,b.gguf --cases N [--jobs J] [--seed S] [--start K]
 *             [--timeout-ms T] [--crash-dir DIR] [--errors-top K] [--max-seconds S]
 *   fuzz_gguf --kind selftest-crash|selftest-hang ...   (children that crash / hang on purpose)
 *   fuzz_gguf --replay INDEX --kind K --seeds ... [--seed S] --out FILE   (writes one case's mutant)
 *   fuzz_gguf --run FILE...                             (each file as one case)
 *
 * The parent stays warm (ggml's backends registered, seeds parsed) and forks a child per case, at
 * most J at a time. The child generates its mutant from (kind, seed, index), writes it to a memfd,
 * loads it through /proc/self/fd/N, makes a context and evaluates 4 tokens. Outcome: ok, clean
 * error (a status and a message), crash (a signal, a sanitizer report, an error without message)
 * or hang (past the timeout). Crashes and hangs keep their input and stderr in the crash folder.
 * The last line is the summary; the exit status is 1 when any case crashed or hung. */
#define _GNU_SOURCE
#include "fuzz.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml_rerope_runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Sanitizer builds: a report aborts the child (a signal the parent counts), leaks are not checked
 * (the children exit without freeing on purpose). Unused in plain builds. */
const char * __asan_default_options(void) { return "abort_on_error=1:detect_leaks=0:handle_abort=0"; }
const char * __ubsan_default_options(void) { return "abort_on_error=1:print_stacktrace=1:halt_on_error=1"; }

typedef enum kind { KIND_BYTE = 1, KIND_SEMANTIC = 2, KIND_CRASH = 3, KIND_HANG = 4, KIND_FILE = 5 } kind;

typedef struct options {
    kind kind;
    char * seeds;
    uint64_t cases, start, run_seed;
    int jobs, timeout_ms, errors_top, verbose;
    double max_seconds; /* > 0: start no case after that long (the summary counts what ran) */
    const char * crash_dir;
    long long replay;
    const char * out;
    char ** files;
    int n_files;
} options;

typedef struct slot {
    pid_t pid;
    uint64_t index;
    int in_fd, err_fd;
    double t0;
    int killed;
} slot;

typedef struct totals {
    uint64_t cases, ok, errors, crashes, hangs;
    uint64_t errors_at[STAGE_DONE + 1];
} totals;

static fuzz_seed * g_seeds;
static int g_n_seeds;
static options g_opt;
static case_report * g_reports; /* one per slot, shared with the children */
static int g_print_files = 1;   /* --run prints each file's outcome */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void quiet_log(enum ggml_log_level level, const char * text, void * user) {
    (void) level, (void) text, (void) user;
}

static const char * kind_name(kind k) {
    switch (k) {
        case KIND_BYTE: return "byte";
        case KIND_SEMANTIC: return "semantic";
        case KIND_CRASH: return "selftest-crash";
        case KIND_HANG: return "selftest-hang";
        default: return "file";
    }
}

static const char * stage_name(int s) {
    static const char * const names[] = {"generate", "load", "context", "eval", "done"};
    return s >= 0 && s <= STAGE_DONE ? names[s] : "?";
}

/* ---------------------------------------------------------------- the mutant of one case */
static int generate(uint64_t index, fuzz_buf * out, char * note, size_t note_size) {
    const int k = g_opt.kind == KIND_SEMANTIC ? KIND_SEMANTIC : KIND_BYTE;
    fuzz_rng r = rng_for_case(g_opt.run_seed, k, index);
    const fuzz_seed * s = &g_seeds[rng_below(&r, (uint64_t) g_n_seeds)];
    snprintf(note, note_size, "%s", s->path);
    if (k == KIND_SEMANTIC) {
        char lies[sizeof(((case_report *) 0)->note)];
        if (mutate_semantic(s, &r, out, lies, sizeof(lies))) return -1;
        const char * base = strrchr(s->path, '/');
        snprintf(note, note_size, "%s: %s", base ? base + 1 : s->path, lies);
        return 0;
    }
    return mutate_bytes(s, &r, out);
}

static int write_all(int fd, const uint8_t * p, size_t n) {
    if (ftruncate(fd, 0) != 0) return -1;
    size_t done = 0;
    while (done < n) {
        const ssize_t w = pwrite(fd, p + done, n - done, (off_t) done);
        if (w <= 0) return -1;
        done += (size_t) w;
    }
    return 0;
}

/* ---------------------------------------------------------------- the child */
static void child(slot * sl, case_report * rep, const char * file) {
    signal(SIGALRM, SIG_DFL);
    struct itimerval it = {{0, 0}, {g_opt.timeout_ms / 1000, (g_opt.timeout_ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    if (ftruncate(sl->err_fd, 0) == 0 && lseek(sl->err_fd, 0, SEEK_SET) == 0) dup2(sl->err_fd, 2);
    memset(rep, 0, sizeof(*rep));
    rep->stage = STAGE_GENERATE;

    if (g_opt.kind == KIND_HANG)
        for (;;) { /* spins until the timer ends it */
        }
    if (g_opt.kind == KIND_CRASH) {
        if (sl->index % 2 == 0) raise(SIGSEGV);
        abort();
    }
    char path[64];
    if (file) {
        snprintf(rep->note, sizeof(rep->note), "%s", file);
        _exit(run_model_file(file, 1, rep));
    }
    fuzz_buf b = {0};
    if (generate(sl->index, &b, rep->note, sizeof(rep->note)) || write_all(sl->in_fd, b.data, b.size)) {
        snprintf(rep->message, sizeof(rep->message), "the mutant generator failed");
        _exit(EXIT_CASE_HARNESS);
    }
    buf_free(&b);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", sl->in_fd);
    _exit(run_model_file(path, sl->index % 4 != 3, rep)); /* every 4th case reads instead of mapping */
}

/* ---------------------------------------------------------------- outcomes */
static void copy_fd_to(int fd, const char * path) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    FILE * fp = fopen(path, "wb");
    if (!fp) return;
    char chunk[65536];
    for (off_t at = 0; at < st.st_size;) {
        const ssize_t n = pread(fd, chunk, sizeof(chunk), at);
        if (n <= 0) break;
        fwrite(chunk, 1, (size_t) n, fp);
        at += n;
    }
    fclose(fp);
}

/* Messages of clean errors, numbers masked, for --errors-top (what the fuzzer reaches). */
#define MAX_KINDS 1024
static struct {
    char text[100];
    uint64_t count;
} g_err_kinds[MAX_KINDS];
static int g_n_err_kinds;

static void count_error(const char * msg) {
    const char * p = strstr(msg, ": ");
    p = p && strncmp(msg, "/proc/self/fd/", 14) == 0 ? p + 2 : msg; /* drop the path */
    char t[100];
    size_t n = 0;
    for (; *p && n + 1 < sizeof(t); p++)
        if (!((*p >= '0' && *p <= '9') && n && t[n - 1] == '#')) t[n++] = (*p >= '0' && *p <= '9') ? '#' : *p;
    t[n] = 0;
    for (int i = 0; i < g_n_err_kinds; i++)
        if (strcmp(g_err_kinds[i].text, t) == 0) {
            g_err_kinds[i].count++;
            return;
        }
    if (g_n_err_kinds < MAX_KINDS) {
        snprintf(g_err_kinds[g_n_err_kinds].text, sizeof(g_err_kinds[0].text), "%s", t);
        g_err_kinds[g_n_err_kinds++].count = 1;
    }
}

static int by_count(const void * a, const void * b) {
    const uint64_t x = ((const typeof(g_err_kinds[0]) *) a)->count, y = ((const typeof(g_err_kinds[0]) *) b)->count;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void keep_failure(const slot * sl, const case_report * rep, const char * what, const char * file) {
    mkdir(g_opt.crash_dir, 0755); /* made on the first failure only */
    char base[512];
    if (file) snprintf(base, sizeof(base), "%s/file-%llu", g_opt.crash_dir, (unsigned long long) sl->index);
    else
        snprintf(base, sizeof(base), "%s/%s-s%llu-%llu", g_opt.crash_dir, kind_name(g_opt.kind),
                 (unsigned long long) g_opt.run_seed, (unsigned long long) sl->index);
    char path[600];
    if (!file) {
        snprintf(path, sizeof(path), "%s.gguf", base);
        copy_fd_to(sl->in_fd, path);
    }
    snprintf(path, sizeof(path), "%s.txt", base);
    FILE * fp = fopen(path, "w");
    if (fp) {
        fprintf(fp, "%s in stage %s\ncase %llu of kind %s, run seed %llu\n%s\nmessage: %s\n--- stderr\n", what,
                stage_name(rep->stage), (unsigned long long) sl->index, kind_name(g_opt.kind),
                (unsigned long long) g_opt.run_seed, rep->note, rep->message);
        fclose(fp);
        char log[620];
        snprintf(log, sizeof(log), "%s.stderr", base);
        copy_fd_to(sl->err_fd, log);
    }
    printf("%s: case %llu, stage %s: %s%s%s (kept as %s.*)\n", what, (unsigned long long) sl->index,
           stage_name(rep->stage), rep->note, rep->message[0] ? " | " : "", rep->message, base);
    fflush(stdout);
}

static void classify(totals * T, slot * sl, int slot_i, int status, const char * file) {
    const case_report * rep = &g_reports[slot_i];
    char what[96];
    T->cases++;
    if (sl->killed || (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)) {
        T->hangs++;
        snprintf(what, sizeof(what), "HANG (over %d ms)", g_opt.timeout_ms);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_CASE_OK) {
        T->ok++;
        if (file && g_print_files) printf("%s: ok\n", file);
        return;
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_CASE_ERROR) {
        T->errors++;
        T->errors_at[rep->stage >= 0 && rep->stage <= STAGE_DONE ? rep->stage : 0]++;
        count_error(rep->message);
        if (file && g_print_files)
            printf("%s: error (status %d, stage %s): %s\n", file, rep->status, stage_name(rep->stage), rep->message);
        if (g_opt.verbose)
            printf("error: case %llu: %s | %s\n", (unsigned long long) sl->index, rep->note, rep->message);
        return;
    } else {
        T->crashes++;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (WIFSIGNALED(status))
            snprintf(what, sizeof(what), "CRASH (signal %d, %s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
        else if (code == EXIT_CASE_BAD_ERROR) snprintf(what, sizeof(what), "CRASH (failed without status or message)");
        else if (code == EXIT_CASE_HARNESS) snprintf(what, sizeof(what), "CRASH (harness: the generator failed)");
        else snprintf(what, sizeof(what), "CRASH (exit status %d)", code);
    }
    keep_failure(sl, rep, what, file);
}

/* ---------------------------------------------------------------- the pool */
static volatile sig_atomic_t g_tick;
static void on_tick(int sig) {
    (void) sig;
    g_tick = 1;
}

static int run_pool(totals * T) {
    const int J = g_opt.jobs;
    slot * slots = calloc((size_t) J, sizeof(slot));
    g_reports = mmap(NULL, sizeof(case_report) * (size_t) J, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!slots || g_reports == MAP_FAILED) return -1;
    for (int i = 0; i < J; i++) {
        slots[i].in_fd = memfd_create("fuzz-input", 0);
        slots[i].err_fd = memfd_create("fuzz-stderr", 0);
        if (slots[i].in_fd < 0 || slots[i].err_fd < 0) return -1;
    }
    /* A watchdog tick wakes waitpid, so that a child that ignores its own timer is killed. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_tick;
    sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART: waitpid returns EINTR */
    struct itimerval it = {{0, 250000}, {0, 250000}};
    setitimer(ITIMER_REAL, &it, NULL);

    uint64_t total = g_opt.kind == KIND_FILE ? (uint64_t) g_opt.n_files : g_opt.cases;
    uint64_t next = 0;
    int running = 0;
    const double t_start = now_s();
    while (next < total || running > 0) {
        if (g_opt.max_seconds > 0 && now_s() - t_start > g_opt.max_seconds) total = next;
        for (int i = 0; i < J && next < total; i++) {
            if (slots[i].pid) continue;
            slots[i].index = g_opt.kind == KIND_FILE ? next : g_opt.start + next;
            slots[i].killed = 0;
            slots[i].t0 = now_s();
            fflush(stdout);
            const pid_t pid = fork();
            if (pid < 0) {
                perror("fuzz: fork");
                return -1;
            }
            if (pid == 0) child(&slots[i], &g_reports[i], g_opt.kind == KIND_FILE ? g_opt.files[next] : NULL);
            slots[i].pid = pid;
            next++;
            running++;
        }
        int status = 0;
        const pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno != EINTR) {
                perror("fuzz: waitpid");
                return -1;
            }
            const double t = now_s(), limit = 2.0 * g_opt.timeout_ms / 1000.0 + 1.0;
            for (int i = 0; i < J; i++)
                if (slots[i].pid && !slots[i].killed && t - slots[i].t0 > limit) {
                    kill(slots[i].pid, SIGKILL);
                    slots[i].killed = 1;
                }
            continue;
        }
        for (int i = 0; i < J; i++)
            if (slots[i].pid == pid) {
                classify(T, &slots[i], i, status, g_opt.kind == KIND_FILE ? g_opt.files[slots[i].index] : NULL);
                if (T->cases % 10000 == 0 && g_opt.kind != KIND_FILE) {
                    printf("progress: cases=%llu crashes=%llu hangs=%llu seconds=%.0f\n", (unsigned long long) T->cases,
                           (unsigned long long) T->crashes, (unsigned long long) T->hangs, now_s() - t_start);
                    fflush(stdout);
                }
                slots[i].pid = 0;
                running--;
            }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int i = 0; i < J; i++) close(slots[i].in_fd), close(slots[i].err_fd);
    free(slots);
    return 0;
}

/* ---------------------------------------------------------------- main */
static void usage(void) {
    fprintf(stderr, "usage: fuzz_gguf --kind byte|semantic|selftest-crash|selftest-hang --seeds A.gguf[,B.gguf] "
                    "--cases N [--jobs J] [--seed S] [--start K] [--timeout-ms T] [--crash-dir DIR] "
                    "[--errors-top K] [--max-seconds S] [--verbose]\n"
                    "       fuzz_gguf --replay INDEX --kind byte|semantic --seeds ... [--seed S] --out FILE\n"
                    "       fuzz_gguf --run FILE...\n");
    exit(2);
}

static void parse_args(int argc, char ** argv) {
    options * o = &g_opt;
    o->jobs = 1;
    o->timeout_ms = 5000;
    o->crash_dir = "fuzz-crashes";
    o->replay = -1;
    o->run_seed = 1;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        const char * v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--run") == 0) {
            o->kind = KIND_FILE;
            o->files = argv + i + 1;
            o->n_files = argc - i - 1;
            return;
        }
        if (strcmp(a, "--verbose") == 0) {
            o->verbose = 1;
            continue;
        }
        if (!v) usage();
        i++;
        if (strcmp(a, "--kind") == 0) {
            o->kind = strcmp(v, "byte") == 0             ? KIND_BYTE
                      : strcmp(v, "semantic") == 0       ? KIND_SEMANTIC
                      : strcmp(v, "selftest-crash") == 0 ? KIND_CRASH
                      : strcmp(v, "selftest-hang") == 0  ? KIND_HANG
                                                         : 0;
            if (!o->kind) usage();
        } else if (strcmp(a, "--seeds") == 0) o->seeds = strdup(v);
        else if (strcmp(a, "--cases") == 0) o->cases = strtoull(v, NULL, 10);
        else if (strcmp(a, "--start") == 0) o->start = strtoull(v, NULL, 10);
        else if (strcmp(a, "--seed") == 0) o->run_seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--jobs") == 0) o->jobs = atoi(v);
        else if (strcmp(a, "--timeout-ms") == 0) o->timeout_ms = atoi(v);
        else if (strcmp(a, "--crash-dir") == 0) o->crash_dir = v;
        else if (strcmp(a, "--errors-top") == 0) o->errors_top = atoi(v);
        else if (strcmp(a, "--max-seconds") == 0) o->max_seconds = atof(v);
        else if (strcmp(a, "--replay") == 0) o->replay = atoll(v);
        else if (strcmp(a, "--out") == 0) o->out = v;
        else usage();
    }
    if (!o->kind || o->jobs < 1 || o->timeout_ms < 1) usage();
}

static int load_seeds(void) {
    if (!g_opt.seeds) return -1;
    for (char *save = NULL, *p = strtok_r(g_opt.seeds, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        g_seeds = realloc(g_seeds, sizeof(fuzz_seed) * (size_t) (g_n_seeds + 1));
        if (!g_seeds || seed_load(&g_seeds[g_n_seeds], p)) return -1;
        g_n_seeds++;
    }
    return g_n_seeds > 0 ? 0 : -1;
}

int main(int argc, char ** argv) {
    parse_args(argc, argv);
    ggml_log_set(quiet_log, NULL); /* ggml's gguf reader logs every rejected file */
    ggml_cpu_init();
    if (!ggml_backend_cpu_reg()) {
        fprintf(stderr, "fuzz: ggml has no CPU backend\n");
        return 2;
    }
    if (g_opt.kind != KIND_FILE && g_opt.kind != KIND_HANG && g_opt.kind != KIND_CRASH && load_seeds()) return 2;

    if (g_opt.replay >= 0) {
        if (!g_opt.out || !g_n_seeds) usage();
        fuzz_buf b = {0};
        char note[256];
        if (generate((uint64_t) g_opt.replay, &b, note, sizeof(note))) return 2;
        FILE * fp = fopen(g_opt.out, "wb");
        if (!fp || fwrite(b.data, 1, b.size, fp) != b.size) return 2;
        fclose(fp);
        printf("case %lld: %s (%zu bytes) -> %s\n", g_opt.replay, note, b.size, g_opt.out);
        return 0;
    }

    totals T = {0};
    if (g_opt.kind == KIND_BYTE || g_opt.kind == KIND_SEMANTIC) {
        /* Each seed as it is must load and run: else every case would be an error and prove nothing. */
        options saved = g_opt;
        char ** files = malloc(sizeof(char *) * (size_t) g_n_seeds);
        for (int i = 0; i < g_n_seeds; i++) files[i] = g_seeds[i].path;
        g_opt.kind = KIND_FILE;
        g_opt.files = files;
        g_opt.n_files = g_n_seeds;
        g_opt.max_seconds = 0;
        totals S = {0};
        g_print_files = 0;
        if (run_pool(&S) || S.ok != (uint64_t) g_n_seeds) {
            fprintf(stderr, "fuzz: a seed does not load and run cleanly (%llu of %d ok)\n", (unsigned long long) S.ok,
                    g_n_seeds);
            return 2;
        }
        free(files);
        g_opt = saved;
    }
    const double t0 = now_s();
    if (run_pool(&T)) return 2;
    const double secs = now_s() - t0;
    if (g_opt.errors_top > 0) {
        qsort(g_err_kinds, (size_t) g_n_err_kinds, sizeof(g_err_kinds[0]), by_count);
        for (int i = 0; i < g_n_err_kinds && i < g_opt.errors_top; i++)
            printf("  %8llu  %s\n", (unsigned long long) g_err_kinds[i].count, g_err_kinds[i].text);
    }
    printf("fuzz: kind=%s cases=%llu ok=%llu errors=%llu crashes=%llu hangs=%llu seconds=%.1f cases_per_s=%.0f "
           "errors_load=%llu errors_context=%llu errors_eval=%llu jobs=%d seed=%llu start=%llu seeds=%d\n",
           kind_name(g_opt.kind), (unsigned long long) T.cases, (unsigned long long) T.ok,
           (unsigned long long) T.errors, (unsigned long long) T.crashes, (unsigned long long) T.hangs, secs,
           secs > 0 ? (double) T.cases / secs : 0.0, (unsigned long long) T.errors_at[STAGE_LOAD],
           (unsigned long long) T.errors_at[STAGE_CONTEXT], (unsigned long long) T.errors_at[STAGE_EVAL], g_opt.jobs,
           (unsigned long long) g_opt.run_seed, (unsigned long long) g_opt.start, g_n_seeds);
    return T.crashes || T.hangs ? 1 : 0;
}
