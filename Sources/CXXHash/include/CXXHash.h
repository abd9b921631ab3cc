// The checksum loops of the migration stream, in C for speed: XXH64's bulk loop and
// XXH3-64 (xxHash 0.8) with an AVX2 loop chosen at run time. Written from the
// specification (xxhash.c). Pure computation: no system calls.
#ifndef CXXHASH_H
#define CXXHASH_H
#include <stddef.h>
#include <stdint.h>

/// XXH64's bulk loop: consumes whole 32-byte stripes of p[0..<n] into the four
/// accumulators and returns how many bytes it consumed (n rounded down to 32).
/// In C because it runs at memory speed there (about twice the Swift loop's rate),
/// and a migration checksums every byte of device memory on both ends.
size_t vfu_xxh64_stripes(uint64_t acc[4], const void *p, size_t n);

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
