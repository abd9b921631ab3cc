#define _GNU_SOURCE
#include "CVFIOUserShim.h"
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

int vfu_eventfd(unsigned int initval, int nonblocking) {
    return eventfd(initval, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

int vfu_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }

#include <fcntl.h>
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

ssize_t vfu_recv_exact(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                       int *extra_fds, int *ctrunc) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_CMSG_FDS)];
        struct cmsghdr align;
    } control;
    *nfds = 0; *extra_fds = 0; *ctrunc = 0;
    size_t got = 0;
    while (got < len) {
        struct iovec iov = { (char *)buf + got, len - got };
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
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
        if (n == 0) break;  // EOF
        got += (size_t)n;
    }
    return (ssize_t)got;
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

#include <pthread.h>
void vfu_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

#define VFU_XXH_P1 0x9E3779B185EBCA87ULL
#define VFU_XXH_P2 0xC2B2AE3D27D4EB4FULL
static inline uint64_t vfu_xxh_round(uint64_t acc, uint64_t input) {
    acc += input * VFU_XXH_P2;
    acc = (acc << 31) | (acc >> 33);
    return acc * VFU_XXH_P1;
}

size_t vfu_xxh64_stripes(uint64_t acc[4], const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t v1 = acc[0], v2 = acc[1], v3 = acc[2], v4 = acc[3];
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, b + i, 32);  /* little-endian hosts only, as the whole protocol */
        v1 = vfu_xxh_round(v1, w[0]);
        v2 = vfu_xxh_round(v2, w[1]);
        v3 = vfu_xxh_round(v3, w[2]);
        v4 = vfu_xxh_round(v4, w[3]);
    }
    acc[0] = v1; acc[1] = v2; acc[2] = v3; acc[3] = v4;
    return i;
}
