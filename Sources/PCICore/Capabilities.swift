/// A standard (0x40-0xFF) capability: its ID and the bytes after the ID/next pair.
public struct PCICapability: Sendable, Equatable {
    public var id: UInt8
    /// Where to place it; nil = the first free dword-aligned spot from 0x40.
    public var offset: Int?
    /// Bytes from cap+2 on (the ID and next pointer are written by the layout).
    public var body: [UInt8]
    public var writeMask: [UInt8]
    public var w1cMask: [UInt8]

    public init(id: UInt8, offset: Int? = nil, body: [UInt8], writeMask: [UInt8] = [], w1cMask: [UInt8] = []) {
        self.id = id
        self.offset = offset
        self.body = body
        self.writeMask = writeMask
        self.w1cMask = w1cMask
    }

    public var length: Int { 2 + body.count }

    public static let powerManagementID: UInt8 = 0x01
    public static let msiID: UInt8 = 0x05
    public static let vendorSpecificID: UInt8 = 0x09
    public static let expressID: UInt8 = 0x10
    public static let msixID: UInt8 = 0x11
}

/// An extended (0x100-0xFFF) capability: ID, version and the bytes after the header dword.
public struct PCIExtendedCapability: Sendable, Equatable {
    public var id: UInt16
    public var version: UInt8
    public var offset: Int?
    public var body: [UInt8]
    public var writeMask: [UInt8]

    public init(id: UInt16, version: UInt8 = 1, offset: Int? = nil, body: [UInt8], writeMask: [UInt8] = []) {
        self.id = id
        self.version = version
        self.offset = offset
        self.body = body
        self.writeMask = writeMask
    }

    public var length: Int { 4 + body.count }

    public static let serialNumberID: UInt16 = 0x0003
    public static let vendorSpecificID: UInt16 = 0x000B
    public static let pasidID: UInt16 = 0x001B
    public static let dvsecID: UInt16 = 0x0023
}

/// Why a capability layout is impossible; names the capability and the reason.
public struct ConfigLayoutError: Error, CustomStringConvertible, Equatable {
    public var subject: String
    public var reason: String
    public init(subject: String, reason: String) {
        self.subject = subject
        self.reason = reason
    }
    public var description: String { "\(subject): \(reason)" }
}

/// Where each capability landed.
public struct PlacedCapabilities: Sendable, Equatable {
    public var standard: [(id: UInt8, offset: Int)] = []
    public var extended: [(id: UInt16, offset: Int, length: Int)] = []

    public func offset(ofStandard id: UInt8) -> Int? { standard.first { $0.id == id }?.offset }
    public func offset(ofExtended id: UInt16) -> Int? { extended.first { $0.id == id }?.offset }

    public static func == (a: Self, b: Self) -> Bool {
        a.standard.map { [Int($0.id), $0.offset] } == b.standard.map { [Int($0.id), $0.offset] }
            && a.extended.map { [Int($0.id), $0.offset, $0.length] } == b.extended.map { [Int($0.id), $0.offset, $0.length] }
    }
}

/// Places capabilities into a config space and links them into well-formed lists.
///
/// Explicit offsets are honoured and checked (dword-aligned, inside the right area,
/// not overlapping the header or another capability); the rest are packed into the
/// first free spots. Standard capabilities live in 0x40-0xFF, extended ones in
/// 0x100-0xFFF with the first one at 0x100 (where PCIe looks for the list).
public enum CapabilityLayout {
    public static func apply(standard: [PCICapability], extended: [PCIExtendedCapability],
                             to config: ConfigSpace) throws(ConfigLayoutError) -> PlacedCapabilities {
        var placed = PlacedCapabilities()
        var used = [Bool](repeating: false, count: config.size)
        for i in 0..<0x40 { used[i] = true }

        func name(_ id: UInt8) -> String { "capability 0x" + String(id, radix: 16) }
        func ename(_ id: UInt16) -> String { "extended capability 0x" + String(id, radix: 16) }
        func free(_ o: Int, _ len: Int) -> Bool { o + len <= used.count && !used[o..<(o + len)].contains(true) }
        func claim(_ o: Int, _ len: Int) { for i in o..<(o + len) { used[i] = true } }

        // Standard: explicit first, then automatic, so automatic ones fill around them.
        var stdOffsets = [Int?](repeating: nil, count: standard.count)
        for (i, c) in standard.enumerated() {
            guard c.length <= 0xC0 else { throw ConfigLayoutError(subject: name(c.id), reason: "is \(c.length) bytes; does not fit in 0x40-0xFF") }
            guard let o = c.offset else { continue }
            guard o % 4 == 0 else { throw ConfigLayoutError(subject: name(c.id), reason: "offset 0x\(String(o, radix: 16)) is not dword-aligned") }
            guard o >= 0x40, o + c.length <= 0x100 else {
                throw ConfigLayoutError(subject: name(c.id), reason: "offset 0x\(String(o, radix: 16)) + \(c.length) bytes is outside 0x40-0xFF")
            }
            guard free(o, c.length) else { throw ConfigLayoutError(subject: name(c.id), reason: "at 0x\(String(o, radix: 16)) overlaps another capability") }
            claim(o, (c.length + 3) & ~3)
            stdOffsets[i] = o
        }
        for (i, c) in standard.enumerated() where stdOffsets[i] == nil {
            let len = (c.length + 3) & ~3
            guard let o = stride(from: 0x40, through: 0x100 - len, by: 4).first(where: { free($0, len) }) else {
                throw ConfigLayoutError(subject: name(c.id), reason: "no room left in 0x40-0xFF for \(c.length) bytes")
            }
            claim(o, len)
            stdOffsets[i] = o
        }
        let stdOrder = zip(standard, stdOffsets.map { $0! }).sorted { $0.1 < $1.1 }
        for (k, (c, o)) in stdOrder.enumerated() {
            let next = k + 1 < stdOrder.count ? stdOrder[k + 1].1 : 0
            config.define(offset: o, width: 1, value: UInt64(c.id))
            config.define(offset: o + 1, width: 1, value: UInt64(next))
            config.define(offset: o + 2, bytes: c.body, writeMask: c.writeMask, w1cMask: c.w1cMask)
            placed.standard.append((c.id, o))
        }
        if let first = stdOrder.first {
            config.define(offset: 0x34, width: 1, value: UInt64(first.1))
            // Status: Capabilities List.
            config.define(offset: 0x06, width: 1, value: UInt64(config.load8(0x06) | 0x10),
                          writable: 0, writeOneToClear: UInt64(config.w1cMask[0x06]))
        }

        guard !extended.isEmpty else { return placed }
        guard config.size == 4096 else {
            throw ConfigLayoutError(subject: ename(extended[0].id), reason: "needs PCI Express (4 KiB config space); set express: true")
        }
        for i in 0x100..<0x1000 { used[i] = false }
        var extOffsets = [Int?](repeating: nil, count: extended.count)
        for (i, c) in extended.enumerated() {
            guard c.length <= 0xF00 else { throw ConfigLayoutError(subject: ename(c.id), reason: "is \(c.length) bytes; does not fit in 0x100-0xFFF") }
            guard let o = c.offset else { continue }
            guard o % 4 == 0 else { throw ConfigLayoutError(subject: ename(c.id), reason: "offset 0x\(String(o, radix: 16)) is not dword-aligned") }
            guard o >= 0x100, o + c.length <= 0x1000 else {
                throw ConfigLayoutError(subject: ename(c.id), reason: "offset 0x\(String(o, radix: 16)) + \(c.length) bytes is outside 0x100-0xFFF")
            }
            guard free(o, c.length) else { throw ConfigLayoutError(subject: ename(c.id), reason: "at 0x\(String(o, radix: 16)) overlaps another capability") }
            claim(o, (c.length + 3) & ~3)
            extOffsets[i] = o
        }
        // The list must start at 0x100: give that spot to the first automatic one if free.
        for (i, c) in extended.enumerated() where extOffsets[i] == nil {
            let len = (c.length + 3) & ~3
            guard let o = stride(from: 0x100, through: 0x1000 - len, by: 4).first(where: { free($0, len) }) else {
                throw ConfigLayoutError(subject: ename(c.id), reason: "no room left in 0x100-0xFFF for \(c.length) bytes")
            }
            claim(o, len)
            extOffsets[i] = o
        }
        let extOrder = zip(extended, extOffsets.map { $0! }).sorted { $0.1 < $1.1 }
        guard extOrder[0].1 == 0x100 else {
            throw ConfigLayoutError(subject: ename(extOrder[0].0.id), reason: "the first extended capability must be at 0x100")
        }
        for (k, (c, o)) in extOrder.enumerated() {
            let next = k + 1 < extOrder.count ? extOrder[k + 1].1 : 0
            let header = UInt32(c.id) | UInt32(c.version & 0xF) << 16 | UInt32(next) << 20
            config.define(offset: o, width: 4, value: UInt64(header))
            config.define(offset: o + 4, bytes: c.body, writeMask: c.writeMask)
            placed.extended.append((c.id, o, c.length))
        }
        return placed
    }

    /// Dword-aligned ranges of extended config space that no capability uses.
    public static func freeExtendedRanges(_ placed: PlacedCapabilities, configSize: Int = 4096) -> [Range<Int>] {
        var used = [Bool](repeating: false, count: configSize)
        for e in placed.extended { for i in e.offset..<min(configSize, e.offset + ((e.length + 3) & ~3)) { used[i] = true } }
        var out: [Range<Int>] = []
        var start: Int? = nil
        for o in stride(from: 0x100, to: configSize, by: 4) {
            if !used[o] { if start == nil { start = o } } else if let s = start { out.append(s..<o); start = nil }
        }
        if let s = start { out.append(s..<configSize) }
        return out
    }
}
