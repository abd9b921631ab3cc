// xxHash's bulk loops: XXH64's (the rest of XXH64 is Swift, VariantDevices/Checksums.swift)
// and the whole of XXH3-64 (xxHash 0.8, from Yann Collet's XXH3 specification), one-shot
// and streaming.
//
// The migration stream checksums every byte of device memory on both ends, so its
// checksum has to run faster than the socket copy it rides on. XXH64 manages about
// 14 GB/s here; XXH3's long-input loop is SIMD friendly and runs at 3-4 times that
// with AVX2, which is chosen at run time (the scalar loop gives the same results).
// Written from the specification and checked against the reference implementation's
// outputs (Tests/VFIOUserTransportTests/XXH3Tests.swift).
#include "CXXHash.h"
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define P32_1 0x9E3779B1U
#define P32_2 0x85EBCA77U
#define P32_3 0xC2B2AE3DU
#define P64_1 0x9E3779B185EBCA87ULL
#define P64_2 0xC2B2AE3D27D4EB4FULL
#define P64_3 0x165667B19E3779F9ULL
#define P64_4 0x85EBCA77C2B2AE63ULL
#define P64_5 0x27D4EB2F165667C5ULL
#define PMX_1 0x165667919E3779F9ULL
#define PMX_2 0x9FB21C651E98DF25ULL

#define STRIPE 64
#define SECRET_SIZE 192
#define STRIPES_PER_BLOCK ((SECRET_SIZE - STRIPE) / 8)   // 16
#define MIDSIZE_MAX 240

static const uint8_t kSecret[SECRET_SIZE] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

// Little-endian hosts only, as the whole protocol.
static inline uint64_t rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void wr64(void *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t mul128_fold64(uint64_t a, uint64_t b) {
    __uint128_t m = (__uint128_t)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

static inline uint64_t xxh64_avalanche(uint64_t h) {
    h ^= h >> 33; h *= P64_2; h ^= h >> 29; h *= P64_3; h ^= h >> 32;
    return h;
}

static inline uint64_t xxh3_avalanche(uint64_t h) {
    h ^= h >> 37; h *= PMX_1; h ^= h >> 32;
    return h;
}

static inline uint64_t rrmxmx(uint64_t h, uint64_t len) {
    h ^= rotl64(h, 49) ^ rotl64(h, 24);
    h *= PMX_2;
    h ^= (h >> 35) + len;
    h *= PMX_2;
    return h ^ (h >> 28);
}

static inline uint64_t mix16(const uint8_t *in, const uint8_t *sec, uint64_t seed) {
    return mul128_fold64(rd64(in) ^ (rd64(sec) + seed), rd64(in + 8) ^ (rd64(sec + 8) - seed));
}

// Inputs of 0 to 240 bytes: each length class has its own mixing, always with the
// default secret (the seed enters the arithmetic instead).
static uint64_t hash_short(const uint8_t *in, size_t len, uint64_t seed) {
    const uint8_t *s = kSecret;
    if (len == 0) return xxh64_avalanche(seed ^ (rd64(s + 56) ^ rd64(s + 64)));
    if (len <= 3) {
        uint32_t c1 = in[0], c2 = in[len >> 1], c3 = in[len - 1];
        uint32_t combined = (c1 << 16) | (c2 << 24) | c3 | ((uint32_t)len << 8);
        uint64_t bitflip = (uint64_t)(rd32(s) ^ rd32(s + 4)) + seed;
        return xxh64_avalanche((uint64_t)combined ^ bitflip);
    }
    if (len <= 8) {
        seed ^= (uint64_t)__builtin_bswap32((uint32_t)seed) << 32;
        uint32_t in1 = rd32(in), in2 = rd32(in + len - 4);
        uint64_t bitflip = (rd64(s + 8) ^ rd64(s + 16)) - seed;
        uint64_t in64 = in2 + ((uint64_t)in1 << 32);
        return rrmxmx(in64 ^ bitflip, len);
    }
    if (len <= 16) {
        uint64_t bitflip1 = (rd64(s + 24) ^ rd64(s + 32)) + seed;
        uint64_t bitflip2 = (rd64(s + 40) ^ rd64(s + 48)) - seed;
        uint64_t lo = rd64(in) ^ bitflip1, hi = rd64(in + len - 8) ^ bitflip2;
        uint64_t acc = len + __builtin_bswap64(lo) + hi + mul128_fold64(lo, hi);
        return xxh3_avalanche(acc);
    }
    uint64_t acc = len * P64_1;
    if (len <= 128) {
        if (len > 32) {
            if (len > 64) {
                if (len > 96) {
                    acc += mix16(in + 48, s + 96, seed);
                    acc += mix16(in + len - 64, s + 112, seed);
                }
                acc += mix16(in + 32, s + 64, seed);
                acc += mix16(in + len - 48, s + 80, seed);
            }
            acc += mix16(in + 16, s + 32, seed);
            acc += mix16(in + len - 32, s + 48, seed);
        }
        acc += mix16(in, s, seed);
        acc += mix16(in + len - 16, s + 16, seed);
        return xxh3_avalanche(acc);
    }
    // 129..240
    size_t rounds = len / 16;
    for (size_t i = 0; i < 8; i++) acc += mix16(in + 16 * i, s + 16 * i, seed);
    uint64_t accEnd = mix16(in + len - 16, s + 136 - 17, seed);
    acc = xxh3_avalanche(acc);
    for (size_t i = 8; i < rounds; i++) acc += mix16(in + 16 * i, s + 16 * (i - 8) + 3, seed);
    return xxh3_avalanche(acc + accEnd);
}

// MARK: The long-input loop

static void accumulate_scalar(uint64_t acc[8], const uint8_t *in, const uint8_t *secret, size_t stripes) {
    for (size_t n = 0; n < stripes; n++) {
        const uint8_t *p = in + n * STRIPE, *k = secret + n * 8;
        for (int i = 0; i < 8; i++) {
            uint64_t v = rd64(p + 8 * i);
            uint64_t vk = v ^ rd64(k + 8 * i);
            acc[i ^ 1] += v;
            acc[i] += (uint64_t)(uint32_t)vk * (vk >> 32);
        }
    }
}

static void scramble_scalar(uint64_t acc[8], const uint8_t *secret) {
    for (int i = 0; i < 8; i++) {
        uint64_t a = acc[i];
        a ^= a >> 47;
        a ^= rd64(secret + 8 * i);
        acc[i] = a * P32_1;
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void accumulate_avx2(uint64_t acc[8], const uint8_t *in, const uint8_t *secret, size_t stripes) {
    __m256i a0 = _mm256_loadu_si256((const __m256i *)acc);
    __m256i a1 = _mm256_loadu_si256((const __m256i *)(acc + 4));
    for (size_t n = 0; n < stripes; n++) {
        const uint8_t *p = in + n * STRIPE, *k = secret + n * 8;
        __m256i d0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i d1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        __m256i k0 = _mm256_xor_si256(d0, _mm256_loadu_si256((const __m256i *)k));
        __m256i k1 = _mm256_xor_si256(d1, _mm256_loadu_si256((const __m256i *)(k + 32)));
        // (lo32 * hi32) of each keyed lane, and the data with neighbouring lanes swapped.
        __m256i m0 = _mm256_mul_epu32(k0, _mm256_shuffle_epi32(k0, _MM_SHUFFLE(0, 3, 0, 1)));
        __m256i m1 = _mm256_mul_epu32(k1, _mm256_shuffle_epi32(k1, _MM_SHUFFLE(0, 3, 0, 1)));
        a0 = _mm256_add_epi64(_mm256_add_epi64(a0, _mm256_shuffle_epi32(d0, _MM_SHUFFLE(1, 0, 3, 2))), m0);
        a1 = _mm256_add_epi64(_mm256_add_epi64(a1, _mm256_shuffle_epi32(d1, _MM_SHUFFLE(1, 0, 3, 2))), m1);
    }
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 4), a1);
}

static int have_avx2;
__attribute__((constructor)) static void detect_cpu(void) {
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
}
#endif

static inline void accumulate(uint64_t acc[8], const uint8_t *in, const uint8_t *secret, size_t stripes) {
#if defined(__x86_64__)
    if (__atomic_load_n(&have_avx2, __ATOMIC_RELAXED)) { accumulate_avx2(acc, in, secret, stripes); return; }
#endif
    accumulate_scalar(acc, in, secret, stripes);
}

int vfu_xxh3_simd(int enable) {
#if defined(__x86_64__)
    int before = __atomic_load_n(&have_avx2, __ATOMIC_RELAXED);
    if (enable >= 0) __atomic_store_n(&have_avx2, enable && __builtin_cpu_supports("avx2"), __ATOMIC_RELAXED);
    return before;
#else
    (void)enable;
    return 0;
#endif
}

/// Consumes `stripes` whole stripes, scrambling at every block boundary.
static void consume(uint64_t acc[8], uint32_t *inBlock, const uint8_t *in, size_t stripes, const uint8_t *secret) {
    while (stripes > 0) {
        size_t k = STRIPES_PER_BLOCK - *inBlock;
        if (k > stripes) k = stripes;
        accumulate(acc, in, secret + *inBlock * 8, k);
        in += k * STRIPE;
        stripes -= k;
        *inBlock += (uint32_t)k;
        if (*inBlock == STRIPES_PER_BLOCK) {
            scramble_scalar(acc, secret + SECRET_SIZE - STRIPE);
            *inBlock = 0;
        }
    }
}

static void init_acc(uint64_t acc[8]) {
    acc[0] = P32_3; acc[1] = P64_1; acc[2] = P64_2; acc[3] = P64_3;
    acc[4] = P64_4; acc[5] = P32_2; acc[6] = P64_5; acc[7] = P32_1;
}

static uint64_t merge(const uint64_t acc[8], const uint8_t *secret, uint64_t len) {
    uint64_t r = len * P64_1;
    for (int i = 0; i < 4; i++)
        r += mul128_fold64(acc[2 * i] ^ rd64(secret + 11 + 16 * i), acc[2 * i + 1] ^ rd64(secret + 11 + 16 * i + 8));
    return xxh3_avalanche(r);
}

static void derive_secret(uint8_t out[SECRET_SIZE], uint64_t seed) {
    for (int i = 0; i < SECRET_SIZE / 16; i++) {
        wr64(out + 16 * i, rd64(kSecret + 16 * i) + seed);
        wr64(out + 16 * i + 8, rd64(kSecret + 16 * i + 8) - seed);
    }
}

// MARK: Public entry points

void vfu_xxh3_init(vfu_xxh3_state *s, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->seed = seed;
    init_acc(s->acc);
    if (seed == 0) memcpy(s->secret, kSecret, SECRET_SIZE); else derive_secret(s->secret, seed);
}

// Stripes are consumed only once at least one byte follows them: the final stripe
// of the input is always hashed by the digest, with its own secret offset.
void vfu_xxh3_update(vfu_xxh3_state *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->total += n;
    if (n <= VFU_XXH3_BUFFER - s->buffered) {
        memcpy(s->buffer + s->buffered, p, n);
        s->buffered += (uint32_t)n;
        return;
    }
    if (s->buffered > 0) {
        size_t load = VFU_XXH3_BUFFER - s->buffered;
        memcpy(s->buffer + s->buffered, p, load);
        p += load; n -= load;
        consume(s->acc, &s->inBlock, s->buffer, VFU_XXH3_BUFFER / STRIPE, s->secret);
        s->buffered = 0;
    }
    if (n > VFU_XXH3_BUFFER) {
        size_t stripes = (n - 1) / STRIPE;
        consume(s->acc, &s->inBlock, p, stripes, s->secret);
        p += stripes * STRIPE; n -= stripes * STRIPE;
        // Keep the last consumed stripe: the digest's final stripe may reach back into it.
        memcpy(s->buffer + VFU_XXH3_BUFFER - STRIPE, p - STRIPE, STRIPE);
    }
    memcpy(s->buffer, p, n);
    s->buffered = (uint32_t)n;
}

uint64_t vfu_xxh3_digest(const vfu_xxh3_state *s) {
    if (s->total <= MIDSIZE_MAX) return hash_short(s->buffer, (size_t)s->total, s->seed);
    uint64_t acc[8];
    memcpy(acc, s->acc, sizeof acc);
    uint32_t inBlock = s->inBlock;
    consume(acc, &inBlock, s->buffer, (s->buffered - 1) / STRIPE, s->secret);
    uint8_t last[STRIPE];
    const uint8_t *lp;
    if (s->buffered >= STRIPE) {
        lp = s->buffer + s->buffered - STRIPE;
    } else {
        size_t back = STRIPE - s->buffered;
        memcpy(last, s->buffer + VFU_XXH3_BUFFER - back, back);
        memcpy(last + back, s->buffer, s->buffered);
        lp = last;
    }
    accumulate(acc, lp, s->secret + SECRET_SIZE - STRIPE - 7, 1);
    return merge(acc, s->secret, s->total);
}

static uint64_t hash_long(const uint8_t *p, size_t n, const uint8_t *secret) {
    uint64_t acc[8];
    init_acc(acc);
    uint32_t inBlock = 0;
    consume(acc, &inBlock, p, (n - 1) / STRIPE, secret);
    accumulate(acc, p + n - STRIPE, secret + SECRET_SIZE - STRIPE - 7, 1);
    return merge(acc, secret, n);
}

uint64_t vfu_xxh3_64(const void *data, size_t n, uint64_t seed) {
    if (n <= MIDSIZE_MAX) return hash_short(data, n, seed);
    if (seed == 0) return hash_long(data, n, kSecret);
    uint8_t derived[SECRET_SIZE];
    derive_secret(derived, seed);
    return hash_long(data, n, derived);
}

void vfu_xxh3_secret(uint8_t out[VFU_XXH3_SECRET], uint64_t seed) {
    if (seed == 0) memcpy(out, kSecret, SECRET_SIZE); else derive_secret(out, seed);
}

uint64_t vfu_xxh3_64_secret(const void *data, size_t n, uint64_t seed, const uint8_t secret[VFU_XXH3_SECRET]) {
    if (n <= MIDSIZE_MAX) return hash_short(data, n, seed);
    return hash_long(data, n, secret);
}

// MARK: XXH64's loop

static inline uint64_t xxh64_round(uint64_t acc, uint64_t input) {
    acc += input * P64_2;
    return rotl64(acc, 31) * P64_1;
}

size_t vfu_xxh64_stripes(uint64_t acc[4], const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t v1 = acc[0], v2 = acc[1], v3 = acc[2], v4 = acc[3];
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, b + i, 32);  // little-endian hosts only
        v1 = xxh64_round(v1, w[0]);
        v2 = xxh64_round(v2, w[1]);
        v3 = xxh64_round(v3, w[2]);
        v4 = xxh64_round(v4, w[3]);
    }
    acc[0] = v1; acc[1] = v2; acc[2] = v3; acc[3] = v4;
    return i;
}
