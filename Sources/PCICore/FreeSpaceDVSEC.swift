/// The "free extended config space" DVSEC: our convention (docs/protocol-extensions.md,
/// reference §7.5) for telling a VMM which extended-config ranges no capability
/// uses, so it can place emulated capabilities (PASID, ...) there.
///
/// Layout (offsets from the capability):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0x0 | 4 | extended capability header: ID 0x0023, version 1, next |
/// | 0x4 | 4 | DVSEC header 1: vendor ID (15:0), revision (19:16), length (31:20) = 12 + 4·n |
/// | 0x8 | 2 | DVSEC header 2: DVSEC ID |
/// | 0xA | 2 | n, the number of ranges |
/// | 0xC | 4·n | ranges: {u16 offset, u16 length}, ascending, dword-aligned, inside 0x100-0xFFF |
///
/// Every listed byte reads zero, ignores writes and belongs to no capability;
/// the DVSEC itself is accounted for (it never lists its own bytes).
public enum FreeSpaceDVSEC {
    /// Our DVSEC ID for the structure (under whatever vendor ID the spec chooses).
    public static let defaultDVSECID: UInt16 = 0xF5EE
    /// The DVSEC revision this layout is.
    public static let defaultRevision: UInt8 = 1
    /// Most ranges the 12-bit DVSEC length can describe.
    public static let maxRanges = (0xFFF - 12) / 4

    /// The capability listing `ranges` (each dword-aligned inside 0x100..<0x1000).
    public static func capability(vendor: UInt16, revision: UInt8 = defaultRevision, dvsecID: UInt16 = defaultDVSECID,
                                  ranges: [Range<Int>], offset: Int? = nil) -> PCIExtendedCapability {
        var data = [UInt8](repeating: 0, count: 2 + 4 * ranges.count)
        data.setLE16(UInt16(ranges.count), at: 0)
        for (k, r) in ranges.enumerated() {
            data.setLE16(UInt16(r.lowerBound), at: 2 + 4 * k)
            data.setLE16(UInt16(r.count), at: 4 + 4 * k)
        }
        return .designatedVendorSpecific(vendor: vendor, revision: revision, dvsecID: dvsecID, data: data, offset: offset)
    }

    /// Whether `cap` is a free-space DVSEC (any vendor) with DVSEC ID `dvsecID`.
    static func header(of cap: PCIExtendedCapability) -> (vendor: UInt16, revision: UInt8, dvsecID: UInt16)? {
        guard cap.id == PCIExtendedCapability.dvsecID, cap.body.count >= 8 else { return nil }
        let h1 = cap.body.le32(at: 0)
        return (UInt16(h1 & 0xFFFF), UInt8((h1 >> 16) & 0xF), cap.body.le16(at: 4))
    }

    /// Replaces the DVSEC at `index` of `configuration.extendedCapabilities` (a
    /// placeholder made by `capability(vendor:revision:dvsecID:ranges: [])`) with one
    /// that lists the ranges left free once everything, the DVSEC included, is
    /// placed. The DVSEC grows with its list, which can move capabilities placed
    /// after it, so the layout is repeated until the list is stable.
    /// Returns the final configuration and the ranges it lists.
    public static func resolve(_ configuration: PCIDeviceConfiguration, at index: Int)
        throws(ConfigLayoutError) -> (PCIDeviceConfiguration, [Range<Int>]) {
        var c = configuration
        let subject = "extendedCapabilities[\(index)]"
        guard c.extendedCapabilities.indices.contains(index), let h = header(of: c.extendedCapabilities[index]) else {
            throw ConfigLayoutError(subject: subject, reason: "is not a free-space DVSEC placeholder")
        }
        let offset = c.extendedCapabilities[index].offset
        var ranges: [Range<Int>] = []
        for _ in 0..<16 {
            c.extendedCapabilities[index] = capability(vendor: h.vendor, revision: h.revision, dvsecID: h.dvsecID,
                                                       ranges: ranges, offset: offset)
            let placed = try c.validate()
            let free = CapabilityLayout.freeExtendedRanges(placed, configSize: 4096)
            guard free.count <= maxRanges else {
                throw ConfigLayoutError(subject: subject, reason: "\(free.count) free ranges do not fit in one DVSEC")
            }
            if free == ranges { return (c, ranges) }
            ranges = free
        }
        throw ConfigLayoutError(subject: subject, reason: "the free-space list does not settle; give the DVSEC an explicit offset")
    }

    /// Parses a free-space DVSEC from config-space bytes at `offset` (for tests and
    /// tools); nil if it is not one.
    public static func parse(_ config: [UInt8], at offset: Int)
        -> (vendor: UInt16, revision: UInt8, dvsecID: UInt16, ranges: [Range<Int>])? {
        guard offset + 12 <= config.count, config.le16(at: offset) == PCIExtendedCapability.dvsecID else { return nil }
        let h1 = config.le32(at: offset + 4)
        let length = Int(h1 >> 20)
        let n = Int(config.le16(at: offset + 10))
        guard length == 12 + 4 * n, offset + length <= config.count else { return nil }
        let ranges = (0..<n).map { k -> Range<Int> in
            let o = Int(config.le16(at: offset + 12 + 4 * k))
            return o..<(o + Int(config.le16(at: offset + 14 + 4 * k)))
        }
        return (UInt16(h1 & 0xFFFF), UInt8((h1 >> 16) & 0xF), config.le16(at: offset + 8), ranges)
    }
}
