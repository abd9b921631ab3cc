// What Swift cannot import from Glibc: eventfd, memfd_create, accept4, vmsplice and
// splice, the CMSG_* macros (the hash loops are in CXXHash). The
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

/// Receives exactly len bytes (unless EOF) in as many recvmsg(2) calls as it takes,
/// with MSG_CMSG_CLOEXEC, collecting the SCM_RIGHTS fds of every call.
/// Returns the number of bytes received (< len only at EOF), or -1 with errno.
/// *nfds receives the number of fds stored in fds (at most max_fds); *extra_fds
/// counts fds that arrived but did not fit (they are closed here); *ctrunc is set
/// when the kernel reported MSG_CTRUNC (the stored fds stay open: the caller closes them).
ssize_t vfu_recv_exact(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                       int *extra_fds, int *ctrunc);

/// One recvmsg(2) of at most len bytes with MSG_CMSG_CLOEXEC (retried on EINTR), for
/// byte-exact forwarding: returns what arrived (0 at EOF) or -1 with errno. The
/// SCM_RIGHTS fds that came with those bytes (up to max_fds; 253 = SCM_MAX_FD fit) are
/// stored in fds, the rest closed; callers that must know which message they belong to
/// read no further than one message. *ctrunc is set on MSG_CTRUNC (stored fds stay open).
/// With nonblocking set it does not wait (MSG_DONTWAIT): -1 with EAGAIN when nothing is there.
ssize_t vfu_recv_some(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds, int *ctrunc, int nonblocking);
/// vfu_recv_buffered: one recvmsg(2) of up to len bytes (retried on EINTR), collecting SCM_RIGHTS fds
/// like vfu_recv_exact (*extra_fds counts those past max_fds, closed; *ctrunc on MSG_CTRUNC,
/// stored fds stay open): the buffered reader's single receive call per small message.
/// Returns the bytes received (0 at EOF), or -1 with errno. vfu_recv_some is the same call
/// without the count and with a non-blocking option (one implementation in shim.c).
ssize_t vfu_recv_buffered(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                      int *extra_fds, int *ctrunc);

/// recv exactly len bytes without ancillary data. Returns bytes read (< len at EOF) or -1.
ssize_t vfu_read_exact(int sock, void *buf, size_t len);

/// Waits until fd is readable or timeout_ms passes (-1 = forever). Returns 1 readable, 0 timeout, -1 error.
int vfu_poll_readable(int fd, int timeout_ms);

/// The calling thread's kernel thread id (for thread ownership checks).
long vfu_gettid(void);
/// Names the calling thread (visible in top/gdb); truncated to 15 bytes.
void vfu_set_thread_name(const char *name);

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

#endif
