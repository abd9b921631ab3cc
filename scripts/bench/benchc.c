// The benchmark client and the raw baseline of scripts/bench.sh, in C so that the
// client costs the same whichever server it measures (ours, libvfio-user's sample,
// or the raw ping-pong), and the baseline is nothing but read and write.
//
// Compiled at run time by scripts/bench.sh (cc -O2); not part of the Swift build.
//
//   benchc echo SOCKET REQ REPLY            raw ping-pong peer: listen on SOCKET, read
//                                          REQ bytes, answer REPLY bytes, until EOF
//   benchc raw SOCKET REQ REPLY N          client of the raw peer: N round trips
//   benchc vfio SOCKET OP REGION OFF SIZE N
//                                          vfio-user client: VERSION, then N
//                                          REGION_READ (OP=r) or REGION_WRITE (OP=w)
//   benchc startup SOCKET CMD...          start CMD; ms until SOCKET accepts a connection
//   benchc hold SOCKET K                   open K vfio-user connections (VERSION done),
//                                          print "ready", keep them until stdin closes
//   benchc fanout K CMD...                 K copies of a client (CMD with %d in the
//                                          socket path replaced by 0..K-1) at once;
//                                          prints the aggregate rate
//
// A client prints one line: "rate=<round trips/s> mbps=<MB/s of data> p50=<us> p99=<us>".
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "benchc: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int connect_to(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    for (int tries = 0; connect(s, (struct sockaddr *)&a, sizeof a) != 0; tries++) {
        if (tries > 2000) die(path);
        usleep(1000);  // the server may still be starting
    }
    return s;
}

// Whole-buffer I/O: the same loops on both sides of every comparison.
static int write_all(int fd, const void *b, size_t n) {
    const char *p = b;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *b, size_t n) {
    char *p = b;
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        if (r == 0) return 1;
        p += r; n -= (size_t)r;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(long n, double secs, size_t data_bytes, uint64_t *lat) {
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    printf("rate=%.0f mbps=%.1f p50=%.2f p99=%.2f\n", n / secs, (double)n * (double)data_bytes / secs / 1e6,
           lat[n / 2] / 1000.0, lat[(n * 99) / 100] / 1000.0);
}

static _Noreturn void echo_main(const char *path, size_t req, size_t reply) {
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("socket");
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    unlink(path);
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 16) != 0) die("bind");
    char *in = calloc(1, req), *out = calloc(1, reply);
    for (;;) {  // one client after another, until killed
        int c = accept(l, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; die("accept"); }
        while (read_all(c, in, req) == 0) {
            memcpy(out, in, reply < 16 ? reply : 16);  // echo the header, like a reply
            if (write_all(c, out, reply) != 0) break;
        }
        close(c);
    }
}

static int raw_main(const char *path, size_t req, size_t reply, long n) {
    int s = connect_to(path);
    char *out = calloc(1, req), *in = calloc(1, reply);
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    long warm = n / 10 + 1;
    for (long i = 0; i < warm; i++)
        if (write_all(s, out, req) || read_all(s, in, reply)) die("warm-up");
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        uint64_t a = now_ns();
        if (write_all(s, out, req) || read_all(s, in, reply)) die("round trip");
        lat[i] = now_ns() - a;
    }
    double t = now_s() - t0;
    size_t data = req > reply ? req - 32 : reply - 32;
    report(n, t, data, lat);
    return 0;
}

struct hdr { uint16_t id, cmd; uint32_t size, flags, err; };

static int version(int s) {
    const char *json = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    size_t jl = strlen(json) + 1;
    char vbuf[256];
    struct hdr h = { 1, 1, (uint32_t)(16 + 4 + jl), 0, 0 };
    memcpy(vbuf, &h, 16);
    memset(vbuf + 16, 0, 4);
    memcpy(vbuf + 20, json, jl);
    if (write_all(s, vbuf, h.size)) die("VERSION");
    struct hdr rh;
    if (read_all(s, &rh, 16)) die("VERSION reply");
    if (rh.size < 16 || rh.size > sizeof vbuf || read_all(s, vbuf, rh.size - 16) || (rh.flags & 0x20)) {
        fprintf(stderr, "benchc: VERSION refused\n");
        return 1;
    }
    return 0;
}

static int startup_main(const char *path, char **cmd) {
    unlink(path);
    double t0 = now_s();
    pid_t p = fork();
    if (p == 0) {
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
        execvp(cmd[0], cmd);
        _exit(127);
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int ok = 0;
    while (now_s() - t0 < 10) {
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) { ok = 1; break; }
        int st;
        if (waitpid(p, &st, WNOHANG) == p) break;
        usleep(100);
    }
    double ms = (now_s() - t0) * 1000;
    close(s);
    kill(p, SIGTERM);
    waitpid(p, NULL, 0);
    if (!ok) { fprintf(stderr, "benchc: %s never listened\n", cmd[0]); return 1; }
    printf("ms=%.1f\n", ms);
    return 0;
}

static int hold_main(const char *path, int k) {
    for (int i = 0; i < k; i++) if (version(connect_to(path))) return 1;
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}

static int vfio_main(const char *path, char op, uint32_t region, uint64_t off, uint32_t size, long n) {
    int s = connect_to(path);
    if (version(s)) return 1;
    struct hdr rh;
    {   // Enable memory and I/O decoding (BARs answer only then). A second client of
        // one device is refused this (it does not own the device); the owner did it.
        char w[34];
        struct hdr wh = { 3, 10, 34, 0, 0 };
        uint64_t o = 4; uint32_t reg = 7, cnt = 2; uint16_t cmd = 0x3;
        memcpy(w, &wh, 16); memcpy(w + 16, &o, 8); memcpy(w + 24, &reg, 4); memcpy(w + 28, &cnt, 4); memcpy(w + 32, &cmd, 2);
        if (write_all(s, w, 34) || read_all(s, &rh, 16) || rh.size < 16) die("command register");
        char skip[64];
        if (rh.size > 16 && (rh.size > 80 || read_all(s, skip, rh.size - 16))) die("command register reply");
    }
    // r: REGION_READ, w: REGION_WRITE, m: REGION_WRITE_MULTI of 8 writes of SIZE (<= 8) bytes.
    size_t req, reply;
    char *out, *in;
    if (op == 'm') {
        req = 16 + 8 + 8 * 24; reply = 16 + 8;
        out = calloc(1, req); in = calloc(1, reply);
        struct hdr q = { 2, 15, (uint32_t)req, 0, 0 };
        memcpy(out, &q, 16);
        uint64_t cnt = 8;
        memcpy(out + 16, &cnt, 8);
        for (int e = 0; e < 8; e++) {
            char *p = out + 24 + e * 24;
            uint64_t data = 0x1122334455667788ull + (uint64_t)e;
            memcpy(p, &off, 8); memcpy(p + 8, &region, 4); memcpy(p + 12, &size, 4); memcpy(p + 16, &data, 8);
        }
    } else {
        req = op == 'w' ? 32 + size : 32; reply = op == 'w' ? 32 : 32 + size;
        out = calloc(1, req); in = calloc(1, reply);
        struct hdr q = { 2, op == 'w' ? 10 : 9, (uint32_t)req, 0, 0 };
        memcpy(out, &q, 16);
        memcpy(out + 16, &off, 8);
        memcpy(out + 24, &region, 4);
        memcpy(out + 28, &size, 4);
        for (size_t i = 32; i < req; i++) out[i] = (char)i;
    }
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    long warm = n / 10 + 1;
    for (long i = 0; i < warm + n; i++) {
        uint64_t a = now_ns();
        static double t0;
        if (i == warm) t0 = now_s();
        if (write_all(s, out, req)) die("request");
        if (read_all(s, in, 16)) { fprintf(stderr, "benchc: the server closed\n"); return 1; }
        memcpy(&rh, in, 16);
        if (rh.flags & 0x20 || rh.size != reply) {
            fprintf(stderr, "benchc: error reply (errno %u, size %u, want %zu)\n", rh.err, rh.size, reply);
            return 1;
        }
        if (read_all(s, in + 16, reply - 16)) die("reply");
        if (i >= warm) lat[i - warm] = now_ns() - a;
        if (i == warm + n - 1) report(n, now_s() - t0, op == 'm' ? 8 * size : size, lat);
    }
    return 0;
}

// K clients at once; the aggregate rate is the sum of theirs.
static int fanout_main(int k, int argc, char **argv) {
    int pipes[64][2];
    for (int i = 0; i < k; i++) {
        if (pipe(pipes[i])) die("pipe");
        pid_t p = fork();
        if (p == 0) {
            char *args[16];
            char sock[512];
            for (int j = 0; j < argc && j < 15; j++) {
                args[j] = argv[j];
                if (strstr(argv[j], "%d")) { snprintf(sock, sizeof sock, argv[j], i); args[j] = sock; }
            }
            args[argc] = NULL;
            dup2(pipes[i][1], 1);
            execv("/proc/self/exe", args);
            die("exec");
        }
        close(pipes[i][1]);
    }
    double total = 0, p50 = 0, p99 = 0;
    int ok = 0;
    for (int i = 0; i < k; i++) {
        char line[256] = {0};
        ssize_t r = read(pipes[i][0], line, sizeof line - 1);
        double rate, mbps, a, b;
        if (r > 0 && sscanf(line, "rate=%lf mbps=%lf p50=%lf p99=%lf", &rate, &mbps, &a, &b) == 4) {
            total += rate; p50 += a; p99 += b; ok++;
        }
    }
    int status, failed = 0;
    while (wait(&status) > 0) if (!WIFEXITED(status) || WEXITSTATUS(status)) failed = 1;
    if (failed || ok != k) { fprintf(stderr, "benchc: a client failed\n"); return 1; }
    printf("rate=%.0f mbps=0 p50=%.2f p99=%.2f\n", total, p50 / k, p99 / k);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "echo")) echo_main(argv[2], strtoul(argv[3], 0, 0), strtoul(argv[4], 0, 0));
    if (argc >= 6 && !strcmp(argv[1], "raw"))
        return raw_main(argv[2], strtoul(argv[3], 0, 0), strtoul(argv[4], 0, 0), strtol(argv[5], 0, 0));
    if (argc >= 8 && !strcmp(argv[1], "vfio"))
        return vfio_main(argv[2], argv[3][0], (uint32_t)strtoul(argv[4], 0, 0), strtoull(argv[5], 0, 0),
                         (uint32_t)strtoul(argv[6], 0, 0), strtol(argv[7], 0, 0));
    if (argc >= 4 && !strcmp(argv[1], "startup")) return startup_main(argv[2], argv + 3);
    if (argc >= 4 && !strcmp(argv[1], "hold")) return hold_main(argv[2], atoi(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "fanout")) {
        int k = atoi(argv[2]);
        if (k < 1 || k > 64) return 2;
        return fanout_main(k, argc - 3, argv + 3);
    }
    fprintf(stderr, "usage: see the comment at the top of scripts/bench/benchc.c\n");
    return 2;
}
