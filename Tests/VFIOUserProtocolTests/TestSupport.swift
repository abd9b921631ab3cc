import Testing
@testable import VFIOUserProtocol

/// Parses a hex dump in the reference's format (`0000: 01 00 ...`), ignoring
/// the offset column.
func hexDump(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    for line in text.split(separator: "\n") {
        var body = Substring(line)
        if let colon = body.firstIndex(of: ":") { body = body[body.index(after: colon)...] }
        for token in body.split(separator: " ") {
            guard let b = UInt8(token, radix: 16) else {
                Issue.record("bad hex token \(token)")
                return []
            }
            out.append(b)
        }
    }
    return out
}

/// SplitMix64: tiny, seedable, good enough for generating test inputs
/// reproducibly without dependencies.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    mutating func u8() -> UInt8 { UInt8.random(in: .min ... .max, using: &self) }
    mutating func u16() -> UInt16 { UInt16.random(in: .min ... .max, using: &self) }
    mutating func u32() -> UInt32 { UInt32.random(in: .min ... .max, using: &self) }
    mutating func u64() -> UInt64 { next() }
    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &self) }
    mutating func bool() -> Bool { next() & 1 == 1 }
    mutating func bytes(_ n: Int) -> [UInt8] { (0 ..< n).map { _ in u8() } }
    mutating func bytes(upTo n: Int) -> [UInt8] { bytes(int(0 ... n)) }
    /// Mostly small values, sometimes extremes: edge cases show up more often.
    mutating func interesting32() -> UInt32 {
        switch int(0 ... 3) {
        case 0: UInt32(int(0 ... 16))
        case 1: [0, 1, .max, .max - 1, 0x8000_0000][int(0 ... 4)]
        default: u32()
        }
    }
    mutating func interesting64() -> UInt64 {
        switch int(0 ... 3) {
        case 0: UInt64(int(0 ... 16))
        case 1: [0, 1, .max, .max - 1, 1 << 63, 0xFFFF_FFFF][int(0 ... 5)]
        default: u64()
        }
    }
    mutating func optional<T>(_ make: (inout SplitMix64) -> T) -> T? { bool() ? make(&self) : nil }
}

/// Whether decoding `bytes` as `T` throws a ProtocolError.
func decodeThrows<T: WirePayload>(_ type: T.Type, _ bytes: [UInt8]) -> Bool {
    do {
        _ = try T(payload: bytes)
        return false
    } catch {
        return true
    }
}
