/// A standard (0x40-0xFF) capability: its ID and the bytes after the ID/next pair.
public struct PCICapability: Sendable, Equatable {
    /// The capability ID (`powerManagementID`, `msiID`, ...).
    public var id: UInt8
    /// Where to place it; nil = the first free dword-aligned spot from 0x40.
    public var offset: Int?
    /// Bytes from cap+2 on (the ID and next pointer are written by the layout).
    public var body: [UInt8]
    /// Per byte of `body`, the bits a client write may change (missing bytes: none).
    public var writeMask: [UInt8]
    /// Per byte of `body`, the bits a client clears by writing 1.
    public var w1cMask: [UInt8]

    /// A capability with its body and write policy; place it with `offset`, or leave that to the layout.
    public init(id: UInt8, offset: Int? = nil, body: [UInt8], writeMask: [UInt8] = [], w1cMask: [UInt8] = []) {
        self.id = id
        self.offset = offset
        self.body = body
        self.writeMask = writeMask
        self.w1cMask = w1cMask
    }

    /// Bytes it covers from the ID byte on.
    public var length: Int { 2 + body.count }

    /// Power Management.
    public static let powerManagementID: UInt8 = 0x01
    /// MSI.
    public static let msiID: UInt8 = 0x05
    /// Vendor-specific.
    public static let vendorSpecificID: UInt8 = 0x09
    /// PCI Express.
    public static let expressID: UInt8 = 0x10
    /// MSI-X.
    public static let msixID: UInt8 = 0x11
}

/// An extended (0x100-0xFFF) capability: ID, version and the bytes after the header dword.
public struct PCIExtendedCapability: Sendable, Equatable {
    /// The extended capability ID (`serialNumberID`, `pasidID`, ...).
    public var id: UInt16
    /// The capability version (4 bits) in its header.
    public var version: UInt8
    /// Where to place it; nil = the first free dword-aligned spot from 0x100.
    public var offset: Int?
    /// Bytes after the header dword (the layout writes the header).
    public var body: [UInt8]
    /// Per byte of `body`, the bits a client write may change (missing bytes: none).
    public var writeMask: [UInt8]

    /// An extended capability with its body and write policy.
    public init(id: UInt16, version: UInt8 = 1, offset: Int? = nil, body: [UInt8], writeMask: [UInt8] = []) {
        self.id = id
        self.version = version
        self.offset = offset
        self.body = body
        self.writeMask = writeMask
    }

    /// Bytes it covers from the header on.
    public var length: Int { 4 + body.count }

    /// Device Serial Number.
    public static let serialNumberID: UInt16 = 0x0003
    /// Vendor-Specific Extended Capability (VSEC).
    public static let vendorSpecificID: UInt16 = 0x000B
    /// Process Address Space ID.
    public static let pasidID: UInt16 = 0x001B
    /// Designated Vendor-Specific Extended Capability (DVSEC).
    public static let dvsecID: UInt16 = 0x0023
}

/// Why a capability layout is impossible; names the capability and the reason.
public struct ConfigLayoutError: Error, CustomStringConvertible, Equatable {
    /// What is wrong: a spec field or capability name.
    public var subject: String
    /// Why, in words a spec author can act on.
    public var reason: String
    /// An error about `subject` for `reason`.
    public init(subject: String, reason: String) {
        self.subject = subject
        self.reason = reason
    }
    /// "subject: reason".
    public var description: String { "\(subject): \(reason)" }
}

/// Where each capability landed in config space and how many bytes it covers, in
/// the order they were placed: what a variant consults before it intercepts a
/// config register (``PCIDevice/placedCapabilities``).
public struct PlacedCapabilities: Sendable, Equatable {
    /// Standard capabilities (0x40-0xFF): ID, offset of the ID byte, length in bytes
    /// from the ID byte on.
    public var standard: [(id: UInt8, offset: Int, length: Int)] = []
    /// Extended capabilities (0x100-0xFFF): ID, offset of the header, length in
    /// bytes from the header on.
    public var extended: [(id: UInt16, offset: Int, length: Int)] = []

    /// An empty placement (no capabilities).
    public init() {}

    /// Where the first standard capability `id` sits, if the device has one.
    public func offset(ofStandard id: UInt8) -> Int? { standard.first { $0.id == id }?.offset }
    /// Where the first extended capability `id` sits, if the device has one.
    public func offset(ofExtended id: UInt16) -> Int? { extended.first { $0.id == id }?.offset }

    /// The config bytes standard capability `id` covers, if the device has one.
    public func range(ofStandard id: UInt8) -> Range<Int>? {
        standard.first { $0.id == id }.map { $0.offset..<($0.offset + $0.length) }
    }

    /// The ID of a standard capability whose bytes overlap `range`, if any: a config
    /// register there belongs to the capability, not to the variant.
    public func standardCapability(overlapping range: Range<Int>) -> UInt8? {
        standard.first { ($0.offset..<($0.offset + $0.length)).overlaps(range) }?.id
    }

    /// The ID of an extended capability whose bytes overlap `range`, if any.
    public func extendedCapability(overlapping range: Range<Int>) -> UInt16? {
        extended.first { ($0.offset..<($0.offset + $0.length)).overlaps(range) }?.id
    }

    /// Same capabilities at the same offsets with the same lengths.
    public static func == (a: Self, b: Self) -> Bool {
        a.standard.map { [Int($0.id), $0.offset, $0.length] } == b.standard.map { [Int($0.id), $0.offset, $0.length] }
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
    /// Places `standard` and `extended` into `config`, links the lists and returns
    /// where each landed; throws naming the capability that does not fit.
    @_spi(Server) public static func apply(standard: [PCICapability], extended: [PCIExtendedCapability],
                             to config: ConfigSpace) throws(ConfigLayoutError) -> PlacedCapabilities {
        var placed = PlacedCapabilities()
        var used = [Bool](repeating: false, count: config.size)
        for i in 0..<0x40 { used[i] = true }

        let stdOffsets = try place(standard.map { ("capability 0x" + String($0.id, radix: 16), $0.length, $0.offset) },
                                   in: 0x40..<0x100, used: &used)
        let stdOrder = zip(standard, stdOffsets).sorted { $0.1 < $1.1 }
        for (k, (c, o)) in stdOrder.enumerated() {
            let next = k + 1 < stdOrder.count ? stdOrder[k + 1].1 : 0
            config.define(offset: o, width: 1, value: UInt64(c.id))
            config.define(offset: o + 1, width: 1, value: UInt64(next))
            config.define(offset: o + 2, bytes: c.body, writeMask: c.writeMask, w1cMask: c.w1cMask)
            placed.standard.append((c.id, o, c.length))
        }
        if let first = stdOrder.first {
            config.define(offset: 0x34, width: 1, value: UInt64(first.1))
            // Status: Capabilities List.
            config.define(offset: 0x06, width: 1, value: UInt64(config.load8(0x06) | 0x10),
                          writable: 0, writeOneToClear: UInt64(config.w1cMask[0x06]))
        }

        guard !extended.isEmpty else { return placed }
        let names = extended.map { "extended capability 0x" + String($0.id, radix: 16) }
        guard config.size == 4096 else {
            throw ConfigLayoutError(subject: names[0], reason: "needs PCI Express (4 KiB config space); set express: true")
        }
        let extOffsets = try place(zip(names, extended).map { ($0, $1.length, $1.offset) }, in: 0x100..<0x1000, used: &used)
        let extOrder = zip(extended, extOffsets).sorted { $0.1 < $1.1 }
        // PCIe looks for the list at 0x100; automatic placement fills it first.
        guard extOrder[0].1 == 0x100 else {
            throw ConfigLayoutError(subject: "extended capability 0x" + String(extOrder[0].0.id, radix: 16),
                                    reason: "the first extended capability must be at 0x100")
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

    /// Chooses an offset for each item inside `area`: explicit offsets first (checked),
    /// then the others into the first free dword-aligned spots, so automatic
    /// placement fills around explicit placement.
    private static func place(_ items: [(name: String, length: Int, offset: Int?)], in area: Range<Int>,
                              used: inout [Bool]) throws(ConfigLayoutError) -> [Int] {
        func hex(_ v: Int) -> String { "0x" + String(v, radix: 16) }
        func free(_ o: Int, _ len: Int) -> Bool { o + len <= area.upperBound && !used[o..<(o + len)].contains(true) }
        func claim(_ o: Int, _ len: Int) { for i in o..<min(o + len, used.count) { used[i] = true } }
        let areaName = "0x" + String(area.lowerBound, radix: 16, uppercase: true) + "-0x"
            + String(area.upperBound - 1, radix: 16, uppercase: true)
        var offsets = [Int?](repeating: nil, count: items.count)
        for (i, item) in items.enumerated() {
            guard item.length <= area.count else {
                throw ConfigLayoutError(subject: item.name, reason: "is \(item.length) bytes; does not fit in \(areaName)")
            }
            guard let o = item.offset else { continue }
            guard o % 4 == 0 else { throw ConfigLayoutError(subject: item.name, reason: "offset \(hex(o)) is not dword-aligned") }
            guard o >= area.lowerBound, o + item.length <= area.upperBound else {
                throw ConfigLayoutError(subject: item.name, reason: "offset \(hex(o)) + \(item.length) bytes is outside \(areaName)")
            }
            guard free(o, item.length) else { throw ConfigLayoutError(subject: item.name, reason: "at \(hex(o)) overlaps another capability") }
            claim(o, (item.length + 3) & ~3)
            offsets[i] = o
        }
        for (i, item) in items.enumerated() where offsets[i] == nil {
            let len = (item.length + 3) & ~3
            guard let o = stride(from: area.lowerBound, through: area.upperBound - len, by: 4).first(where: { free($0, len) }) else {
                throw ConfigLayoutError(subject: item.name, reason: "no room left in \(areaName) for \(item.length) bytes")
            }
            claim(o, len)
            offsets[i] = o
        }
        return offsets.map { $0! }
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
