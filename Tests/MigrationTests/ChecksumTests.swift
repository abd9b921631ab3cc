import CXXHash
import MigrationStream
import Testing
import VariantDevices

/// XXH3 and XXH64 against the reference implementation (xxHash 0.8.x, values
/// computed with the `xxhash` Python binding), both of XXH3's loops, and streaming
/// in every kind of chunking.
@Suite(.serialized) struct ChecksumTests {
    /// Byte i of the test input.
    static func input(_ n: Int) -> [UInt8] {
        (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7 &+ ($0 >> 8)) }
    }

    /// (length, XXH3_64 seed 0, XXH3_64 seed 0x9E3779B185EBCA87): every length class
    /// (0, 1-3, 4-8, 9-16, 17-128, 129-240, long) and the block and buffer edges.
    static let vectors: [(Int, UInt64, UInt64)] = [
        (0, 0x2D06800538D394C2, 0x07F70F819703314D),
        (1, 0x4C5CCA45D0F4811F, 0x69F37FE502A5CE84),
        (3, 0x6E3E2670E61106AC, 0x82EE0D8C3A491C38),
        (4, 0x5C4C63133443D03F, 0xCAF8AFA7BA97CB0E),
        (8, 0xF9FD4DD0B04D78F5, 0x3B4C70CBE3EBC00D),
        (9, 0x7C20DF9712C26EDF, 0x99FD9784F4EFDF49),
        (16, 0x86ABF6BACCEA0858, 0xFDE04540EAE27B52),
        (17, 0xB58BF5DC5022D071, 0xC98530740C07E43B),
        (128, 0x10D17F72C0CCBA41, 0xD6B287B434C3EAC1),
        (129, 0x1648BDC3DB49D1A2, 0xEFCB0A611944C6E1),
        (240, 0xB6CFAF343FAB81E6, 0xC587312C2EC9D377),
        (241, 0x956CAE592C67279E, 0x033C6361AF37452E),
        (255, 0x64A6073025EB7929, 0x31C35225D9BA374F),
        (256, 0xB15E550733C5DFAC, 0x51C263184A535324),
        (257, 0xA016292DB5425CF4, 0x41D44248AF4DEFF7),
        (1024, 0xEA76DDA06D735AC5, 0x8A19A48F80C02141),
        (1025, 0xBADEB1907FB9A31E, 0x868A8FDFDB85D9FB),
        (4096, 0x3460AF104D0739AA, 0xF2EC546C407351A2),
        (100003, 0xA40506269A429981, 0xE33334E9269542E7),
    ]
    static let seed: UInt64 = 0x9E37_79B1_85EB_CA87

    @Test(arguments: [true, false])
    func xxh3MatchesTheReference(simd: Bool) {
        let before = vfu_xxh3_simd(simd ? 1 : 0)
        defer { _ = vfu_xxh3_simd(before) }
        for (n, plain, seeded) in Self.vectors {
            let bytes = Self.input(n)
            #expect(XXH3.hash(bytes) == plain, "length \(n)")
            #expect(XXH3.hash(bytes, seed: Self.seed) == seeded, "length \(n), seeded")
            #expect(XXH3.Seeded(seed: Self.seed).hash(bytes) == seeded, "length \(n), prepared seed")
            var s = XXH3(seed: Self.seed)
            s.update(bytes)
            #expect(s.digest() == seeded, "length \(n), streamed")
        }
    }

    /// Any split of the input gives the one-shot hash: chunks around the 64-byte
    /// stripe, the 256-byte buffer and the 1 KiB block, and the digest taken mid-way.
    @Test func xxh3StreamsInAnyChunking() {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 63, 64, 65, 240, 241, 255, 256, 257, 319, 320, 1023, 1024, 1025, 3000, 70_001] {
            let bytes = Self.input(n)
            for seed: UInt64 in [0, 42] {
                let want = XXH3.hash(bytes, seed: seed)
                for chunking in [[1], [63, 1, 64], [200, 57], [256], [255, 2], [1024, 1], [5000], []] {
                    var s = XXH3(seed: seed)
                    var at = 0, k = 0
                    while at < n {
                        let step = chunking.isEmpty ? Int.random(in: 1...700, using: &rng) : chunking[k % chunking.count]
                        let end = min(n, at + step)
                        s.update(bytes[at..<end])
                        // The digest never disturbs the state.
                        if k == 3 { #expect(s.digest() == XXH3.hash(bytes[0..<end], seed: seed)) }
                        at = end; k += 1
                    }
                    #expect(s.digest() == want, "length \(n), seed \(seed), chunks \(chunking)")
                }
            }
        }
    }

    @Test func xxh64MatchesTheReference() {
        #expect(XXH64.hash([UInt8]()) == 0xEF46_DB37_51D8_E999)
        #expect(XXH64.hash(Array("abc".utf8)) == 0x44BC_2CF5_AD77_0999)
        let long = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var x = XXH64(seed: 5)
        x.update(long[0..<3]); x.update(long[3..<40]); x.update(long[40...])
        #expect(x.digest() == XXH64.hash(long, seed: 5))
    }
}
