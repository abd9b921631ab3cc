import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// Clocks: monotonic for latencies and scopes, wall time for events and reports.
enum Clock {
    static func monoNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func wallNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Wall time minus monotonic time, so one monotonic read dates an event.
    static let wallOffsetNs: Int64 = Int64(bitPattern: wallNs()) - Int64(bitPattern: monoNs())

    /// Seconds since the epoch (microsecond resolution) of a monotonic time.
    static func seconds(_ monoNs: UInt64) -> Double {
        let wall = Int64(bitPattern: monoNs) + wallOffsetNs
        return Double(wall / 1000) / 1e6
    }
}

/// An event as the hot path records it: plain values, formatted by the watcher's thread.
struct RawEvent: Sendable {
    enum Kind: String, Sendable, CaseIterable { case access, dma, irq, reset, poll, fault }
    var kind: Kind
    var seq: UInt64 = 0
    var timeNs: UInt64
    var session: UInt64 = 0
    var write = false
    var command: UInt16 = 0
    var region: UInt32 = 0
    var offset: UInt64 = 0
    var size = 0
    var bytes: [UInt8] = []
    var errno: UInt32 = 0
    var text: String? = nil
    var count = 0
    var faultID = 0

    func controlEvent(device: String) -> ControlEvent {
        var e = ControlEvent(event: kind.rawValue, seq: seq, time: Clock.seconds(timeNs), device: device)
        switch kind {
        case .access:
            e.conn = session
            e.op = write ? "write" : "read"
            e.command = Command(command).description
            e.region = RegionRef(region)
            e.offset = Num(offset)
            e.size = size
            if errno != 0 { e.error = VFIOErrno(errno).description }
            else if size <= 8 && bytes.count == size { e.value = Num(leValue(bytes)) }
            else if !bytes.isEmpty { e.data = Hex.encode(bytes.prefix(64)) }
        case .dma:
            e.op = write ? "write" : "read"
            e.address = Num(offset)
            e.size = size
            if errno != 0 { e.error = VFIOErrno(errno).description }
        case .irq:
            e.irq = IRQIndex(region).description.lowercased()
            e.vector = Int(offset)
        case .reset:
            e.reason = text
        case .poll:
            e.region = RegionRef(region)
            e.offset = Num(offset)
            e.size = size
            e.count = count
        case .fault:
            e.faultId = faultID
            e.kind = text
            e.reason = count == 0 ? "hit" : count == 1 ? "armed" : "removed"
        }
        return e
    }
}

/// One watcher's queue of events: the hot path appends (never blocks on the
/// watcher's socket); the watcher's own thread drains and writes. Bounded: when the
/// watcher falls behind, events are dropped and counted.
final class Watcher: @unchecked Sendable {
    // @unchecked: `items` and `dropped` are only touched with `lock` held (the hot path and the
    // watcher's thread both take it; waiting needs the condition variable, which `Locked` has not).
    let kinds: Set<RawEvent.Kind>
    static let capacity = 1 << 16
    private let lock = ConditionLock()
    private var items: [RawEvent] = []
    private var dropped = 0

    init(kinds: Set<RawEvent.Kind>) { self.kinds = kinds }

    func push(_ e: RawEvent) {
        lock.withLock {
            if items.count < Self.capacity { items.append(e) } else { dropped += 1 }
            lock.signal()
        }
    }

    /// Everything queued, waiting up to `timeoutMs` for something; and how many were dropped since.
    func take(timeoutMs: Int) -> ([RawEvent], Int) {
        lock.withLock {
            if items.isEmpty && dropped == 0 { lock.wait(untilMonotonicMs: monotonicMs() + timeoutMs) }
            let out = items, d = dropped
            items.removeAll(keepingCapacity: true)
            dropped = 0
            return (out, d)
        }
    }
}

/// Handling times of one command: a count and the last 4096 samples.
struct LatencyLog {
    var count: UInt64 = 0
    var errors: UInt64 = 0
    var maxNs: UInt64 = 0
    /// Grows to 4096 samples, then wraps.
    var ring: [UInt64] = []

    mutating func record(_ ns: UInt64, failed: Bool) {
        if ring.count < 4096 { ring.append(ns) } else { ring[Int(count & 4095)] = ns }
        count &+= 1
        if failed { errors &+= 1 }
        if ns > maxNs { maxNs = ns }
    }

    func stats(_ name: String) -> CommandStats {
        let samples = Array(ring.prefix(Int(min(count, 4096)))).sorted()
        func p(_ q: Double) -> Double {
            guard !samples.isEmpty else { return 0 }
            let i = min(samples.count - 1, Int((Double(samples.count) * q).rounded(.up)) - 1)
            return Double(samples[max(i, 0)]) / 1000
        }
        return CommandStats(command: name, count: count, errors: errors, p50Us: p(0.5), p90Us: p(0.9), p99Us: p(0.99),
                            maxUs: Double(maxNs) / 1000)
    }
}

struct UnmodeledEntry {
    var reads: UInt64 = 0
    var writes: UInt64 = 0
    var first: UInt64
    var last: UInt64

    mutating func count(write: Bool, at now: UInt64) {
        if write { writes &+= 1 } else { reads &+= 1 }
        last = now
    }
}

struct PollEntry {
    var longestRun = 0
    var loops = 0
    var first: UInt64
    var last: UInt64
    var active = false
}

/// Which bytes of a region a register or handler models.
struct ModeledMap: Sendable {
    /// nil: every byte (RAM, config space, handler regions).
    var words: [UInt64]?

    static let all = ModeledMap(words: nil)

    init(words: [UInt64]?) { self.words = words }

    init(size: Int) { words = [UInt64](repeating: 0, count: (size + 63) / 64) }

    mutating func mark(_ range: Range<UInt64>) {
        guard words != nil else { return }
        let limit = UInt64(words!.count * 64)
        var o = range.lowerBound
        while o < min(range.upperBound, limit) {
            words![Int(o / 64)] |= 1 << (o % 64)
            o += 1
        }
    }

    /// Whether every byte of [offset, offset + size) is modeled (at most 4096 checked).
    func covers(offset: UInt64, size: Int) -> Bool {
        guard let words else { return true }
        var o = offset
        let end = offset + UInt64(min(size, 4096))
        while o < end {
            let w = Int(o / 64)
            guard w < words.count else { return false }
            if words[w] & (1 << (o % 64)) == 0 { return false }
            o += 1
        }
        return true
    }
}

extension RawEvent {
    /// The event as one JSON line, written by hand (a watcher receives every access, and
    /// JSONEncoder costs several times the access itself). Same keys, same sorted order
    /// and the same values as encoding ``controlEvent(device:)``; ControlTests compares them.
    func jsonLine(device: String) -> [UInt8] {
        var o = JSONLineWriter()
        let e = controlEvent(device: device)
        if let v = e.address { o.string("address", v.description) }
        if let v = e.command { o.string("command", v) }
        if let v = e.conn { o.raw("conn", String(v)) }
        if let v = e.count { o.raw("count", String(v)) }
        if let v = e.data { o.string("data", v) }
        o.string("device", e.device)
        if let v = e.error { o.string("error", v) }
        o.string("event", e.event)
        if let v = e.faultId { o.raw("faultId", String(v)) }
        if let v = e.irq { o.string("irq", v) }
        if let v = e.kind { o.string("kind", v) }
        if let v = e.offset { o.string("offset", v.description) }
        if let v = e.op { o.string("op", v) }
        if let v = e.reason { o.string("reason", v) }
        if let v = e.region { o.string("region", v.description) }
        o.raw("seq", String(e.seq))
        if let v = e.size { o.raw("size", String(v)) }
        o.raw("time", Self.micros(timeNs))
        if let v = e.value { o.string("value", v.description) }
        if let v = e.vector { o.raw("vector", String(v)) }
        return o.finish()
    }

    /// Seconds since the epoch with up to six decimals, trailing zeros dropped.
    static func micros(_ monoNs: UInt64) -> String {
        let us = (Int64(bitPattern: monoNs) + Clock.wallOffsetNs) / 1000
        var frac = String(us % 1_000_000)
        frac = String(repeating: "0", count: 6 - frac.count) + frac
        while frac.count > 1 && frac.hasSuffix("0") { frac.removeLast() }
        return "\(us / 1_000_000).\(frac)"
    }
}

/// A JSON object written member by member (keys and strings here never need escaping
/// but quotes and backslashes, which are escaped anyway).
struct JSONLineWriter {
    var bytes: [UInt8] = [UInt8(ascii: "{")]

    mutating func key(_ k: String) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        bytes += k.utf8
        bytes += "\":".utf8
    }

    mutating func string(_ k: String, _ v: String) {
        key(k)
        bytes.append(UInt8(ascii: "\""))
        for b in v.utf8 {
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { bytes.append(UInt8(ascii: "\\")) }
            bytes.append(b)
        }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func raw(_ k: String, _ v: String) {
        key(k)
        bytes += v.utf8
    }

    mutating func finish() -> [UInt8] {
        bytes += "}\n".utf8
        return bytes
    }
}
