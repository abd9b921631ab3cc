import FoundationEssentials
import VFIOUserProtocol

// The control socket's messages (docs/control.md): one JSON object per line each way.

/// A number in a request: a JSON integer, or a string in decimal or "0x" hex.
/// Replies always write it as a "0x" hex string.
public struct Num: Codable, Sendable, Hashable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public var value: UInt64
    public init(_ v: UInt64) { value = v }
    public init(integerLiteral v: UInt64) { value = v }

    /// Parses "0x1f", "31" or "0b11111".
    public static func parse(_ s: String) -> UInt64? {
        let t = String(s.lowercased().filter { $0 != "_" })
        if t.hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        if t.hasPrefix("0b") { return UInt64(t.dropFirst(2), radix: 2) }
        return UInt64(t)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(UInt64.self) { value = v; return }
        if let s = try? c.decode(String.self), let v = Num.parse(s) { value = v; return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected a non-negative integer or a \"0x...\" string")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public var description: String { "0x" + String(value, radix: 16) }
}

/// A region by name ("config", "bar0"..."bar5", "rom", "vga") or index (a JSON
/// integer or a decimal string); device-specific regions are "region9", ...
public struct RegionRef: Codable, Sendable, Hashable, CustomStringConvertible {
    public var index: UInt32
    public init(_ index: UInt32) { self.index = index }

    public static func parse(_ s: String) -> RegionRef? {
        let t = s.lowercased()
        switch t {
        case "config", "cfg": return RegionRef(RegionIndex.config.rawValue)
        case "rom": return RegionRef(RegionIndex.rom.rawValue)
        case "vga": return RegionRef(RegionIndex.vga.rawValue)
        default: break
        }
        if t.hasPrefix("bar"), let n = UInt32(t.dropFirst(3)), n <= 5 { return RegionRef(n) }
        if t.hasPrefix("region"), let n = UInt32(t.dropFirst(6)) { return RegionRef(n) }
        if let n = UInt32(t) { return RegionRef(n) }
        return nil
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(UInt32.self) { index = v; return }
        if let s = try? c.decode(String.self), let r = RegionRef.parse(s) { index = r.index; return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected a region: config, bar0...bar5, rom, vga or an index")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public var description: String {
        switch index {
        case 0...5: "bar\(index)"
        case RegionIndex.rom.rawValue: "rom"
        case RegionIndex.config.rawValue: "config"
        case RegionIndex.vga.rawValue: "vga"
        default: "region\(index)"
        }
    }
}

/// What arms a fault later instead of at once (the spec's `faults` section, or `fault-add`).
public struct FaultTrigger: Codable, Sendable, Equatable {
    /// After this many guest region accesses (reads and writes, any region) since the fault was added.
    public var afterAccesses: Int?
    /// This long after the fault was added.
    public var afterMs: Int?
    /// When a guest writes `value` to `region` + `offset` (any width, value compared in full).
    public var onWrite: WriteMatch?

    public struct WriteMatch: Codable, Sendable, Equatable {
        public var region: RegionRef
        public var offset: Num
        public var value: Num
        public init(region: RegionRef, offset: Num, value: Num) {
            self.region = region
            self.offset = offset
            self.value = value
        }
    }

    public init(afterAccesses: Int? = nil, afterMs: Int? = nil, onWrite: WriteMatch? = nil) {
        self.afterAccesses = afterAccesses
        self.afterMs = afterMs
        self.onWrite = onWrite
    }
}

/// One fault to inject (docs/control.md lists what each kind uses).
public struct FaultSpec: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case dma, delay, hang, disconnect, config }
    public var kind: Kind
    /// Scope: expires after this many hits ...
    public var count: Int?
    /// ... or this long after it was armed; neither: until removed.
    public var durationMs: Int?
    /// Stays armed across device resets (default: a reset removes it).
    public var survivesReset: Bool?
    /// Fires only when this happens first.
    public var trigger: FaultTrigger?
    /// delay / disconnect: only replies to this command (e.g. "REGION_READ").
    public var command: String?
    /// delay / disconnect / hang: only accesses to this region ...
    public var region: RegionRef?
    /// ... that overlap [offset, offset + length) (length default 1).
    public var offset: Num?
    public var length: Num?
    /// dma: only DMA overlapping [address, address + size) (default: any).
    public var address: Num?
    public var size: Num?
    /// dma: "read" or "write" (default both).
    public var direction: String?
    /// dma: the errno the device sees, "EFAULT" (default) or "EIO".
    public var errno: String?
    /// delay: how long each reply is held (ms).
    public var ms: Int?
    /// hang: "all-ones" (default) or "frozen" (reads return the value of the first read after arming).
    public var mode: String?
    /// hang: the device's work queue stops running jobs while the fault is armed.
    public var stopWork: Bool?
    /// config: the bytes (hex) guest reads see at `offset` instead of the real ones.
    public var data: String?

    public init(kind: Kind) { self.kind = kind }
}

/// A request on the control socket.
public struct ControlRequest: Codable, Sendable {
    /// Echoed in the reply.
    public var id: Int?
    public var op: String
    /// Device name (the spec's `name`); optional while the process serves one device.
    public var device: String?
    public var region: RegionRef?
    public var offset: Num?
    public var length: Int?
    public var value: Num?
    /// Bytes as hex ("0df0feca").
    public var data: String?
    /// Bypass the device model (no side effects).
    public var raw: Bool?
    /// "intx", "msi", "msix", "err", "req".
    public var irq: String?
    public var vector: Int?
    public var deassert: Bool?
    public var fault: FaultSpec?
    public var faultId: Int?
    /// watch: event kinds wanted (default all).
    public var kinds: [String]?
    /// watch: end after this many events; polls: new detection threshold.
    public var limit: Int?
    public var threshold: Int?
    /// disconnect: every connection, not just the owner's.
    public var all: Bool?

    public init(op: String, device: String? = nil) {
        self.op = op
        self.device = device
    }
}

public struct RegionSummary: Codable, Sendable, Equatable {
    public var region: RegionRef
    public var size: Num
    /// "registers", "ram", "config", "handler".
    public var backing: String
}

public struct DeviceSummary: Codable, Sendable, Equatable {
    public var name: String
    public var vendor: Num
    public var deviceID: Num
    public var regions: [RegionSummary]
    /// Vectors per interrupt index (intx, msi, msix, err, req).
    public var irqs: [String: Int]
    /// The session that owns the device, if any.
    public var owner: UInt64?
    public var resets: Int
    public var workHeld: Bool
}

public struct FaultStatus: Codable, Sendable, Equatable {
    public var id: Int
    public var spec: FaultSpec
    /// "pending" (waiting for its trigger) or "armed".
    public var state: String
    public var hits: Int
    public var remaining: Int?
    public var expiresInMs: Int?
}

public struct CommandStats: Codable, Sendable, Equatable {
    public var command: String
    public var count: UInt64
    public var errors: UInt64
    /// Server-side handling time (dispatch to reply ready), over the last 4096 commands.
    public var p50Us: Double
    public var p90Us: Double
    public var p99Us: Double
    public var maxUs: Double
}

public struct UnmodeledAccess: Codable, Sendable, Equatable {
    public var region: RegionRef
    public var offset: Num
    public var size: Int
    public var reads: UInt64
    public var writes: UInt64
    /// Seconds since the epoch.
    public var first: Double
    public var last: Double
}

public struct PollingLoop: Codable, Sendable, Equatable {
    public var region: RegionRef
    public var offset: Num
    public var size: Int
    /// Reads in the longest unbroken run seen.
    public var longestRun: Int
    /// Runs that passed the threshold.
    public var loops: Int
    public var first: Double
    public var last: Double
    /// The guest is still in this loop (nothing else was accessed since).
    public var active: Bool
}

/// The reply to a request: `ok` and the fields the request's op fills in.
public struct ControlReply: Codable, Sendable {
    public var id: Int?
    public var ok: Bool
    /// Machine-readable error code (docs/control.md) and a sentence for people.
    public var error: String?
    public var reason: String?
    public var device: String?
    public var region: RegionRef?
    public var offset: Num?
    public var data: String?
    public var value: Num?
    public var devices: [DeviceSummary]?
    public var fault: FaultStatus?
    public var faults: [FaultStatus]?
    /// irq: signalled to the eventfd now (false: pending behind a mask).
    public var delivered: Bool?
    public var stats: [CommandStats]?
    public var unmodeled: [UnmodeledAccess]?
    public var polls: [PollingLoop]?
    public var threshold: Int?
    public var dropped: Int?
    public var watching: Bool?

    public init(id: Int?, ok: Bool) {
        self.id = id
        self.ok = ok
    }

    public static func failure(_ id: Int?, _ code: String, _ reason: String) -> ControlReply {
        var r = ControlReply(id: id, ok: false)
        r.error = code
        r.reason = reason
        return r
    }
}

/// One line of a `watch` stream.
public struct ControlEvent: Codable, Sendable, Equatable {
    /// "access", "dma", "irq", "reset", "poll", "fault", "overflow".
    public var event: String
    public var seq: UInt64
    /// Seconds since the epoch (microseconds).
    public var time: Double
    public var device: String
    /// The client connection (session) whose command it was.
    public var conn: UInt64?
    /// access, dma: "read" or "write".
    public var op: String?
    public var command: String?
    public var region: RegionRef?
    public var offset: Num?
    public var size: Int?
    /// Accesses of 1...8 bytes: the value (little-endian); longer ones: `data`.
    public var value: Num?
    public var data: String?
    /// The errno the access or DMA failed with.
    public var error: String?
    public var address: Num?
    public var irq: String?
    public var vector: Int?
    public var reason: String?
    public var count: Int?
    public var faultId: Int?
    public var kind: String?
}

/// Hex encoding of bytes for requests and replies ("0df0feca").
public enum Hex {
    public static func encode<C: Collection>(_ b: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(b.count * 2)
        for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var t = Array(s.utf8.filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "_") })
        if t.count >= 2, t[0] == UInt8(ascii: "0"), t[1] | 0x20 == UInt8(ascii: "x") { t.removeFirst(2) }
        guard t.count % 2 == 0 else { return nil }
        func nib(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var out = [UInt8]()
        var i = 0
        while i < t.count {
            guard let h = nib(t[i]), let l = nib(t[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}

/// The little-endian value of up to 8 bytes.
func leValue<C: Collection>(_ b: C) -> UInt64 where C.Element == UInt8 {
    var v: UInt64 = 0
    for (i, x) in b.prefix(8).enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
    return v
}

/// JSON for one line: compact, keys sorted so output is stable.
enum LineJSON {
    static func encode<T: Encodable>(_ v: T) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var bytes = (try? [UInt8](e.encode(v))) ?? Array("{\"ok\":false,\"error\":\"internal\"}".utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }
}
