// An LD_PRELOAD hook that counts heap allocations (malloc, calloc, realloc,
// posix_memalign, aligned_alloc, memalign) in the whole process; SIGUSR2 writes
// "allocs=<n>" to stderr. scripts/bench.sh reads it before and after a number of
// REGION_READ/REGION_WRITE round trips to show that the hot path allocates nothing.
// Benchmark-only: compiled by scripts/bench.sh at run time, never linked into vfu.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong allocs;

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

void *malloc(size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    void *p = memalign(a, n);
    if (!p) return 12;  // ENOMEM
    *out = p;
    return 0;
}

static void report(int sig) {
    (void)sig;
    char buf[40] = "allocs=";
    char digits[24];
    int k = 0;
    unsigned long v = atomic_load(&allocs);
    do { digits[k++] = (char)('0' + v % 10); v /= 10; } while (v);
    size_t len = strlen(buf);
    while (k) buf[len++] = digits[--k];
    buf[len++] = '\n';
    (void)!write(2, buf, len);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = report;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
}
