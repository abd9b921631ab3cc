#define _GNU_SOURCE
#include "CVFIOUserShim.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int vfu_eventfd(unsigned int initval, int nonblocking) {
    return eventfd(initval, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

int vfu_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }

int vfu_memfd_seal_size(int fd) { return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); }

int vfu_accept_cloexec(int fd) {
    int r;
    do { r = accept4(fd, NULL, NULL, SOCK_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r;
}

int vfu_socketpair(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }

// Room for the most fds one message may carry (SCM_MAX_FD is 253 on Linux).
#define VFU_MAX_CMSG_FDS 253

static int send_iov(int sock, struct iovec *iov, int iovcnt, const int *fds, int nfds) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_CMSG_FDS)];
        struct cmsghdr align;
    } control;
    if (nfds < 0 || nfds > VFU_MAX_CMSG_FDS) { errno = EINVAL; return -1; }
    int first = 1;
    while (iovcnt > 0) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)iovcnt;
        if (first && nfds > 0) {
            memset(control.buf, 0, sizeof control.buf);
            msg.msg_control = control.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        first = 0;  // fds went with the first byte; never attach them again
        size_t left = (size_t)n;
        while (iovcnt > 0 && left >= iov->iov_len) { left -= iov->iov_len; iov++; iovcnt--; }
        if (iovcnt > 0) { iov->iov_base = (char *)iov->iov_base + left; iov->iov_len -= left; }
    }
    return 0;
}

int vfu_send_all(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec iov = { (void *)buf, len };
    return send_iov(sock, &iov, 1, fds, nfds);
}

int vfu_send_all2(int sock, const void *a, size_t alen, const void *b, size_t blen, const int *fds, int nfds) {
    struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
    return send_iov(sock, iov, blen ? 2 : 1, fds, nfds);
}

// Room for one recvmsg's control data: as many fds as one message may carry.
typedef union {
    char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_CMSG_FDS)];
    struct cmsghdr align;
} recv_control;

// One recvmsg(2) into buf (retried on EINTR) with MSG_CMSG_CLOEXEC, so no received fd
// leaks into a child. The SCM_RIGHTS fds it brings are appended to fds[*nfds...] up
// to max_fds; the rest are closed and counted in *extra_fds. MSG_CTRUNC sets *ctrunc
// (never clears it): the fds stored stay open, the caller decides. The counters are
// not reset here, so vfu_recv_exact can add up several calls. Returns what recvmsg
// returned; errno is recvmsg's when that is -1 (nothing is closed then).
static ssize_t recv_once(int sock, void *buf, size_t len, int flags, int *fds, int max_fds, int *nfds,
                         int *extra_fds, int *ctrunc) {
    recv_control control;
    struct iovec iov = { buf, len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    // CMSG_FIRSTHDR is NULL when no control data came (msg_controllen is 0 then).
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *data = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i, sizeof fd);
            if (*nfds < max_fds) fds[(*nfds)++] = fd;
            else { close(fd); (*extra_fds)++; }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) *ctrunc = 1;
    return n;
}

ssize_t vfu_recv_exact(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                       int *extra_fds, int *ctrunc) {
    *nfds = 0; *extra_fds = 0; *ctrunc = 0;
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv_once(sock, (char *)buf + got, len - got, 0, fds, max_fds, nfds, extra_fds, ctrunc);
        if (n < 0) return -1;
        if (n == 0) break;  // EOF
        got += (size_t)n;
    }
    return (ssize_t)got;
}

ssize_t vfu_recv_some(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds, int *ctrunc, int nonblocking) {
    int extra_fds = 0;  // closed in recv_once; the proxy forwards bytes and needs no count
    *nfds = 0; *ctrunc = 0;
    return recv_once(sock, buf, len, nonblocking ? MSG_DONTWAIT : 0, fds, max_fds, nfds, &extra_fds, ctrunc);
}

ssize_t vfu_read_exact(int sock, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(sock, (char *)buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

int vfu_poll_readable(int fd, int timeout_ms) {
    struct pollfd p = { fd, POLLIN, 0 };
    int r;
    do { r = poll(&p, 1, timeout_ms); } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    return r > 0 ? 1 : 0;
}

long vfu_gettid(void) { return (long)syscall(SYS_gettid); }

void vfu_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

int vfu_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

void vfu_pipe_grow(int fd, int size) { (void)fcntl(fd, F_SETPIPE_SZ, size); }

ssize_t vfu_splice_out(int fd, int pipe_r, int pipe_w, const void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        struct iovec v = { (char *)buf + done, len - done };
        ssize_t in = vmsplice(pipe_w, &v, 1, 0);
        if (in < 0) {
            if (errno == EINTR) continue;
            return done > 0 ? (ssize_t)done : -1;
        }
        // Everything in the pipe goes out before the next vmsplice, so the pipe is
        // empty whenever we return: a caller that falls back to copying after a
        // failure never leaves stale pages behind.
        size_t left = (size_t)in;
        while (left > 0) {
            ssize_t out = splice(pipe_r, NULL, fd, NULL, left, SPLICE_F_MOVE);
            if (out < 0 && errno == EINTR) continue;
            if (out <= 0) {
                int e = out < 0 ? errno : EPIPE;
                // Drain what the pipe still holds; the caller decides what to do.
                char sink[4096];
                while (left > 0) {
                    ssize_t r = read(pipe_r, sink, left < sizeof sink ? left : sizeof sink);
                    if (r <= 0) break;
                    left -= (size_t)r;
                }
                errno = e;
                return done > 0 ? (ssize_t)done : -1;
            }
            left -= (size_t)out;
            done += (size_t)out;
        }
    }
    return (ssize_t)done;
}

int vfu_block_sigpipe(void) {
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    return sigismember(&old, SIGPIPE);
}

void vfu_restore_sigpipe(int was_blocked) {
    if (was_blocked) return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    // A SIGPIPE raised meanwhile (a splice or write to a closed peer) is pending on
    // this thread: take it before unblocking, or it would kill the process.
    struct timespec zero = { 0, 0 };
    while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {}
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

// The server's buffered reader: vfu_recv_some that also counts the fds past max_fds
// (closed) in *extra_fds, so the message they rode with can be refused.
ssize_t vfu_recv_buffered(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                          int *extra_fds, int *ctrunc) {
    *nfds = 0; *extra_fds = 0; *ctrunc = 0;
    return recv_once(sock, buf, len, 0, fds, max_fds, nfds, extra_fds, ctrunc);
}
