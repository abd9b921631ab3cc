import CXXHash

// The two hashes of the migratable devices. XXH3 checksums the migration stream
// and tracks dirty RAM pages: it runs at about three times XXH64's rate, and a
// stop-copy hashes every byte of device memory on both ends. XXH64 stays where it is
// part of the emulated device's own behaviour (the HASH descriptor, the DIGEST
// register), which guests see and must not change.

/// XXH3-64 (xxHash 0.8), streaming; the loop is in C (CXXHash/xxhash.c), with
/// AVX2 when the CPU has it.
public struct XXH3: Sendable {
    private var state = vfu_xxh3_state()

    /// A hasher for `seed`.
    public init(seed: UInt64 = 0) { vfu_xxh3_init(&state, seed) }

    /// Feeds `bytes`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        vfu_xxh3_update(&state, base, bytes.count)
    }

    /// Feeds `bytes`.
    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        withRawBytes(bytes) { update($0) }
    }

    /// The hash of everything fed so far (the state is not consumed).
    public func digest() -> UInt64 {
        withUnsafePointer(to: state) { vfu_xxh3_digest($0) }
    }

    /// The XXH3-64 of `bytes` in one call.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        vfu_xxh3_64(bytes.baseAddress, bytes.count, seed)
    }

    /// The XXH3-64 of `bytes` in one call.
    public static func hash<C: Collection>(_ bytes: C, seed: UInt64 = 0) -> UInt64 where C.Element == UInt8 {
        withRawBytes(bytes) { hash($0, seed: seed) }
    }

    /// Hashes many inputs with one seed, deriving the seed's secret once.
    public struct Seeded: Sendable {
        /// The seed every `hash(_:)` uses.
        public let seed: UInt64
        private var secret: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                             UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                             UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

        /// Derives the secret for `seed` once.
        public init(seed: UInt64) {
            self.seed = seed
            withUnsafeMutableBytes(of: &secret) { vfu_xxh3_secret($0.baseAddress!.assumingMemoryBound(to: UInt8.self), seed) }
        }

        /// The same value as `XXH3.hash(bytes, seed: seed)`.
        public func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
            withUnsafeBytes(of: secret) {
                vfu_xxh3_64_secret(bytes.baseAddress, bytes.count, seed, $0.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }

        /// The XXH3-64 of `bytes` with this seed; equal to `XXH3.hash(bytes, seed: seed)`.
        public func hash<C: Collection>(_ bytes: C) -> UInt64 where C.Element == UInt8 {
            withRawBytes(bytes) { hash($0) }
        }
    }
}

/// XXH64 (xxHash, 64-bit), streaming. Fast enough to checksum device memory at
/// memory speed, which a migration stream of up to 1 GiB needs.
public struct XXH64: Sendable {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    private var v1, v2, v3, v4: UInt64
    private let seed: UInt64
    private var total: UInt64 = 0
    private var buffer: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var buffered = 0

    /// A hasher for `seed`.
    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.p1 &+ Self.p2
        v2 = seed &+ Self.p2
        v3 = seed
        v4 = seed &- Self.p1
    }

    @inline(__always) static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }
    @inline(__always) static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        rotl(acc &+ input &* p2, 31) &* p1
    }
    @inline(__always) static func merge(_ acc: UInt64, _ v: UInt64) -> UInt64 {
        (acc ^ round(0, v)) &* p1 &+ p4
    }

    /// Feeds `bytes`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress, bytes.count > 0 else { return }
        var n = bytes.count
        total &+= UInt64(n)
        if buffered > 0 {
            let take = min(32 - buffered, n)
            withUnsafeMutableBytes(of: &buffer) { b in (b.baseAddress! + buffered).copyMemory(from: p, byteCount: take) }
            buffered += take
            p += take
            n -= take
            if buffered < 32 { return }
            let (a, b, c, d) = buffer
            v1 = Self.round(v1, UInt64(littleEndian: a)); v2 = Self.round(v2, UInt64(littleEndian: b))
            v3 = Self.round(v3, UInt64(littleEndian: c)); v4 = Self.round(v4, UInt64(littleEndian: d))
            buffered = 0
        }
        if n >= 32 {
            var acc = (v1, v2, v3, v4)
            let done = withUnsafeMutableBytes(of: &acc) { raw in
                vfu_xxh64_stripes(raw.baseAddress!.assumingMemoryBound(to: UInt64.self), p, n)
            }
            (v1, v2, v3, v4) = acc
            p += done
            n -= done
        }
        if n > 0 {
            withUnsafeMutableBytes(of: &buffer) { bb in bb.baseAddress!.copyMemory(from: p, byteCount: n) }
            buffered = n
        }
    }

    /// Feeds `bytes`.
    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        withRawBytes(bytes) { update($0) }
    }

    /// The hash of everything fed so far (the state is not consumed).
    public func digest() -> UInt64 {
        var h: UInt64
        if total >= 32 {
            h = Self.rotl(v1, 1) &+ Self.rotl(v2, 7) &+ Self.rotl(v3, 12) &+ Self.rotl(v4, 18)
            h = Self.merge(h, v1); h = Self.merge(h, v2); h = Self.merge(h, v3); h = Self.merge(h, v4)
        } else {
            h = seed &+ Self.p5
        }
        h &+= total
        var buf = buffer
        withUnsafeBytes(of: &buf) { raw in
            var p = raw.baseAddress!
            var n = buffered
            while n >= 8 {
                h ^= Self.round(0, UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)))
                h = Self.rotl(h, 27) &* Self.p1 &+ Self.p4
                p += 8; n -= 8
            }
            if n >= 4 {
                h ^= UInt64(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))) &* Self.p1
                h = Self.rotl(h, 23) &* Self.p2 &+ Self.p3
                p += 4; n -= 4
            }
            while n > 0 {
                h ^= UInt64(p.load(as: UInt8.self)) &* Self.p5
                h = Self.rotl(h, 11) &* Self.p1
                p += 1; n -= 1
            }
        }
        h ^= h >> 33; h &*= Self.p2; h ^= h >> 29; h &*= Self.p3; h ^= h >> 32
        return h
    }

    /// The XXH64 of `bytes` in one call.
    public static func hash<C: Collection>(_ bytes: C, seed: UInt64 = 0) -> UInt64 where C.Element == UInt8 {
        var x = XXH64(seed: seed)
        x.update(bytes)
        return x.digest()
    }

    /// The XXH64 of `bytes` in one call.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var x = XXH64(seed: seed)
        x.update(bytes)
        return x.digest()
    }
}

/// Runs `body` on the bytes of `c`: in place when they are contiguous (arrays,
/// slices), else from a copy.
@inline(__always)
func withRawBytes<C: Collection, R>(_ c: C, _ body: (UnsafeRawBufferPointer) -> R) -> R where C.Element == UInt8 {
    if let r = c.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return r }
    return Array(c).withUnsafeBytes(body)
}
