// What several test targets share: a seeded generator, a failure type, and where the
// repository is. A plain target (not a product), so only the tests depend on it.


import Glibc
/// SplitMix64: tiny, seedable, good enough for generating test inputs reproducibly
/// without dependencies. A failing randomised test names its seed and replays.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    public mutating func u8() -> UInt8 { UInt8.random(in: .min ... .max, using: &self) }
    public mutating func u16() -> UInt16 { UInt16.random(in: .min ... .max, using: &self) }
    public mutating func u32() -> UInt32 { UInt32.random(in: .min ... .max, using: &self) }
    public mutating func u64() -> UInt64 { next() }
    public mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &self) }
    public mutating func bool() -> Bool { next() & 1 == 1 }
    public mutating func bytes(_ n: Int) -> [UInt8] { (0 ..< n).map { _ in u8() } }
    public mutating func bytes(upTo n: Int) -> [UInt8] { bytes(int(0 ... n)) }
    /// Mostly small values, sometimes extremes: edge cases show up more often.
    public mutating func interesting32() -> UInt32 {
        switch int(0 ... 3) {
        case 0: UInt32(int(0 ... 16))
        case 1: [0, 1, .max, .max - 1, 0x8000_0000][int(0 ... 4)]
        default: u32()
        }
    }
    public mutating func interesting64() -> UInt64 {
        switch int(0 ... 3) {
        case 0: UInt64(int(0 ... 16))
        case 1: [0, 1, .max, .max - 1, 1 << 63, 0xFFFF_FFFF][int(0 ... 5)]
        default: u64()
        }
    }
    public mutating func optional<T>(_ make: (inout SplitMix64) -> T) -> T? { bool() ? make(&self) : nil }
}

/// A test's own failure, with a message.
public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// The package root (this file is Tests/TestSupport/TestSupport.swift).
public let repositoryRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

/// Polls `condition` (every millisecond) until it holds; false after `timeoutMs`.
/// A bound on a wait, never a speed assertion.
public func waitUntil(timeoutMs: Int = 5000, _ condition: () throws -> Bool) rethrows -> Bool {
    var start = timespec(), now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    while true {
        if try condition() { return true }
        clock_gettime(CLOCK_MONOTONIC, &now)
        if (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1_000_000 >= timeoutMs { return false }
        usleep(1000)
    }
}
