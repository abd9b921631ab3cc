// What Swift cannot import from Glibc: eventfd, memfd_create, accept4, vmsplice and
// splice, the CMSG_* macros; and the XXH3 loop, which needs SIMD intrinsics. The
// fd-passing send/receive is done here in C because the CMSG arithmetic is
// macro-only; everything else lives in Swift.
#ifndef CVFIOUSERSHIM_H
#define CVFIOUSERSHIM_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// eventfd(2) with EFD_CLOEXEC, optionally EFD_NONBLOCK. Returns -1 and errno on failure.
int vfu_eventfd(unsigned int initval, int nonblocking);
/// memfd_create(2) with MFD_CLOEXEC | MFD_ALLOW_SEALING. Returns -1 and errno on failure.
int vfu_memfd_create(const char *name);
/// Seals a memfd's size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), so nobody it is
/// shared with can make our mappings of it fault. Returns 0 or -1 with errno.
int vfu_memfd_seal_size(int fd);
/// accept4(2) with SOCK_CLOEXEC.
int vfu_accept_cloexec(int fd);
/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
int vfu_socketpair(int fds[2]);

/// Sends the whole of buf (looping on partial writes) with MSG_NOSIGNAL. The fds
/// ride on the first sendmsg only. Returns 0, or -1 with errno.
int vfu_send_all(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// Sends two buffers as one message (header and payload) without copying them together.
int vfu_send_all2(int sock, const void *a, size_t alen, const void *b, size_t blen, const int *fds, int nfds);

/// Receives exactly len bytes (unless EOF), collecting SCM_RIGHTS fds from the
/// first recvmsg with MSG_CMSG_CLOEXEC.
/// Returns the number of bytes received (< len only at EOF), or -1 with errno.
/// *nfds receives the number of fds stored in fds (at most max_fds); *extra_fds
/// counts fds that arrived but did not fit (they are closed here); *ctrunc is set
/// when the kernel reported MSG_CTRUNC (all received fds are closed then).
ssize_t vfu_recv_exact(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                       int *extra_fds, int *ctrunc);

/// recv exactly len bytes without ancillary data. Returns bytes read (< len at EOF) or -1.
ssize_t vfu_read_exact(int sock, void *buf, size_t len);

/// Waits until fd is readable or timeout_ms passes (-1 = forever). Returns 1 readable, 0 timeout, -1 error.
int vfu_poll_readable(int fd, int timeout_ms);

/// The calling thread's kernel thread id (for thread ownership checks).
long vfu_gettid(void);
/// Names the calling thread (visible in top/gdb); truncated to 15 bytes.
void vfu_set_thread_name(const char *name);

/// XXH64's bulk loop: consumes whole 32-byte stripes of p[0..<n] into the four
/// accumulators and returns how many bytes it consumed (n rounded down to 32).
/// In C because it runs at memory speed there (about twice the Swift loop's rate),
/// and a migration checksums every byte of device memory on both ends.
size_t vfu_xxh64_stripes(uint64_t acc[4], const void *p, size_t n);

/// pipe2(2) with O_CLOEXEC.
int vfu_pipe(int fds[2]);
/// Asks for a pipe of `size` bytes (F_SETPIPE_SZ): more pages per splice. Best effort:
/// the default 64 KiB works too.
void vfu_pipe_grow(int fd, int size);
/// Sends buf to fd without copying it: vmsplice(2) into the pipe, then splice(2) out.
/// The kernel keeps references to buf's pages until the reader has read them, so buf
/// must not change until then. The pipe is empty again on return. Returns the bytes
/// sent (fewer only after an error), or -1 with errno if none were: EINVAL when fd
/// does not take spliced pages.
ssize_t vfu_splice_out(int fd, int pipe_r, int pipe_w, const void *buf, size_t len);
/// Blocks SIGPIPE on this thread; returns whether it was blocked already.
int vfu_block_sigpipe(void);
/// Undoes vfu_block_sigpipe, first taking any SIGPIPE raised meanwhile.
void vfu_restore_sigpipe(int was_blocked);

/// XXH3-64 (xxHash 0.8), the migration stream's checksum: AVX2 when the CPU has it,
/// scalar otherwise, with identical results. The state is plain data: copy it to fork
/// a running hash.
#define VFU_XXH3_BUFFER 256
#define VFU_XXH3_SECRET 192
typedef struct {
    uint64_t acc[8];
    uint64_t total;        ///< bytes hashed so far
    uint64_t seed;
    uint32_t buffered;     ///< bytes waiting in buffer
    uint32_t inBlock;      ///< stripes consumed in the current block
    uint8_t secret[VFU_XXH3_SECRET];
    uint8_t buffer[VFU_XXH3_BUFFER];
} vfu_xxh3_state;

void vfu_xxh3_init(vfu_xxh3_state *s, uint64_t seed);
void vfu_xxh3_update(vfu_xxh3_state *s, const void *data, size_t n);
uint64_t vfu_xxh3_digest(const vfu_xxh3_state *s);
/// Whether the SIMD loop is in use; enable 0 or 1 switches it (tests compare the two
/// loops), -1 only asks. Both give the same hashes.
int vfu_xxh3_simd(int enable);
/// One shot: XXH3_64bits_withSeed.
uint64_t vfu_xxh3_64(const void *data, size_t n, uint64_t seed);
/// The secret XXH3 derives from a seed, for hashing many inputs with one seed.
void vfu_xxh3_secret(uint8_t out[VFU_XXH3_SECRET], uint64_t seed);
/// One shot with a secret from vfu_xxh3_secret(seed): the same value as vfu_xxh3_64(data, n, seed).
uint64_t vfu_xxh3_64_secret(const void *data, size_t n, uint64_t seed, const uint8_t secret[VFU_XXH3_SECRET]);
#endif
