/*
 * guest-test: a guest-side program tested against an emulated device. It runs in
 * the guest (scripts/vfu-qemu --run), finds the device in sysfs, maps its BAR0 as
 * a user-space driver would, and checks the doorbell block of specs/default.json
 * (docs/spec-format.md): MAGIC, VERSION, and that SCRATCH keeps what is written.
 * Prints one line per check; exits 0 only if all pass.
 *
 * Usage: guest-test [BDF]   (default 0000:00:05.0)
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int failed;

static void check(const char *what, uint32_t got, uint32_t want) {
    printf("%s %s: got 0x%08x, want 0x%08x\n", got == want ? "PASS" : "FAIL", what, got, want);
    if (got != want) failed = 1;
}

static uint32_t sysfs_hex(const char *dev, const char *attr) {
    char path[256], buf[32] = {0};
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/%s", dev, attr);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) { perror(path); exit(2); }
    fclose(f);
    return (uint32_t)strtoul(buf, NULL, 16);
}

int main(int argc, char **argv) {
    const char *dev = argc > 1 ? argv[1] : "0000:00:05.0";
    check("vendor", sysfs_hex(dev, "vendor"), 0x1b36);
    check("device", sysfs_hex(dev, "device"), 0x0005);

    /* Memory decoding on, then BAR0 through sysfs, as a user-space driver (DPDK, SPDK) does. */
    char path[256];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/enable", dev);
    int en = open(path, O_WRONLY);
    if (en < 0 || write(en, "1", 1) != 1) { perror(path); return 2; }
    close(en);
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource0", dev);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) { perror(path); return 2; }
    volatile uint32_t *bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (bar == MAP_FAILED) { perror("mmap resource0"); return 2; }

    check("MAGIC", bar[0x00 / 4], 0x44554656);
    check("VERSION", bar[0x04 / 4], 0x00010000);
    bar[0x08 / 4] = 0xC0FFEE42;
    check("SCRATCH after a write", bar[0x08 / 4], 0xC0FFEE42);
    bar[0x08 / 4] = 0;
    check("SCRATCH after a second write", bar[0x08 / 4], 0);

    munmap((void *)bar, 4096);
    close(fd);
    printf("guest-test: %s\n", failed ? "FAILED" : "all passed");
    return failed;
}
