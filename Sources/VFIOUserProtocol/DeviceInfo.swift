/// `vfio_device_info` flags (reference §3.3, §4.3).
public struct DeviceInfoFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `VFIO_DEVICE_FLAGS_RESET`: the device supports DEVICE_RESET.
    public static let reset = DeviceInfoFlags(rawValue: 0x1)
    /// `VFIO_DEVICE_FLAGS_PCI`: a PCI device (the only kind served here).
    public static let pci = DeviceInfoFlags(rawValue: 0x2)
    /// `VFIO_DEVICE_FLAGS_PLATFORM`: a platform device.
    public static let platform = DeviceInfoFlags(rawValue: 0x4)
    /// `VFIO_DEVICE_FLAGS_AMBA`: an ARM AMBA device.
    public static let amba = DeviceInfoFlags(rawValue: 0x8)
    /// `VFIO_DEVICE_FLAGS_CCW`: an s390 channel I/O device.
    public static let ccw = DeviceInfoFlags(rawValue: 0x10)
    /// `VFIO_DEVICE_FLAGS_AP`: an s390 adjunct processor device.
    public static let ap = DeviceInfoFlags(rawValue: 0x20)
    /// `VFIO_DEVICE_FLAGS_FSL_MC`: a Freescale fsl-mc device.
    public static let fslMC = DeviceInfoFlags(rawValue: 0x40)
    /// Only valid in our extended (24-byte) form; never send it to QEMU.
    public static let caps = DeviceInfoFlags(rawValue: 0x80)
    /// `VFIO_DEVICE_FLAGS_CDX`: an AMD CDX device.
    public static let cdx = DeviceInfoFlags(rawValue: 0x100)
}

/// A device-info capability (reference §4.6). Only PCI_ATOMIC_COMP is typed;
/// the zPCI layouts travel as `.unknown` with their `DeviceInfoCapabilityID`.
public enum DeviceInfoCapability: Hashable, Sendable {
    /// `flags`: COMP32 0x1, COMP64 0x2, COMP128 0x4.
    case pciAtomicComp(flags: UInt32)
    /// Any other capability, kept as its raw header fields and body.
    case unknown(id: UInt16, version: UInt16, body: [UInt8])

    /// The capability as it goes into a chain.
    public var raw: RawCapability {
        switch self {
        case .pciAtomicComp(let flags):
            var w = WireWriter(capacity: 8)
            w.u32(flags); w.u32(0)
            return RawCapability(id: DeviceInfoCapabilityID.pciAtomicComp, version: 1, body: w.bytes)
        case .unknown(let id, let version, let body):
            return RawCapability(id: id, version: version, body: body)
        }
    }

    /// Types a raw capability; unknown IDs and versions become `.unknown`. Throws `.truncated` for a short known body.
    public init(raw: RawCapability) throws(ProtocolError) {
        switch (raw.id, raw.version) {
        case (DeviceInfoCapabilityID.pciAtomicComp, 1):
            var r = WireReader(raw.body)
            let flags = try r.u32()
            try r.skip(4)  // reserved: part of the fixed 16-byte capability
            self = .pciAtomicComp(flags: flags)
        default:
            self = .unknown(id: raw.id, version: raw.version, body: raw.body)
        }
    }
}

/// DEVICE_GET_INFO request and reply payload (reference §3.3).
///
/// The standard vfio-user form is the 16-byte prefix of Linux's
/// `vfio_device_info`. As an opt-in extension (negotiated through
/// `x-swift-vfio-user` in VERSION, and only when the request's `argsz` > 16)
/// the full 24-byte kernel struct is used: `cap_offset` @16, pad @20, then a
/// capability chain. `capOffset == nil` selects the standard form.
public struct DeviceInfo: WirePayload, Hashable {
    /// Payload size of the standard form (QEMU's).
    public static let standardSize = 16
    /// Payload size of the extended form with `cap_offset` (our `device-info-caps` extension).
    public static let extendedSize = 24

    /// Size the client can take; in a reply, the size needed for everything.
    public var argsz: UInt32
    /// What kind of device and what it supports.
    public var flags: DeviceInfoFlags
    /// Regions the device has (at least `RegionIndex.standardCount` for PCI).
    public var numRegions: UInt32
    /// IRQ indices the device has.
    public var numIRQs: UInt32
    /// Present only in the extended form.
    public var capOffset: UInt32?
    /// The capability chain; empty in the standard form.
    public var capabilities: [DeviceInfoCapability]

    /// A reply or request with the given fields (the standard form unless `capOffset` is set).
    public init(argsz: UInt32 = 16, flags: DeviceInfoFlags = [], numRegions: UInt32 = 0, numIRQs: UInt32 = 0,
                capOffset: UInt32? = nil, capabilities: [DeviceInfoCapability] = []) {
        self.argsz = argsz
        self.flags = flags
        self.numRegions = numRegions
        self.numIRQs = numIRQs
        self.capOffset = capOffset
        self.capabilities = capabilities
    }

    /// A complete extended reply: `argsz` is the full size, CAPS and
    /// `cap_offset` set when there are capabilities.
    public static func extended(flags: DeviceInfoFlags, numRegions: UInt32, numIRQs: UInt32,
                                capabilities: [DeviceInfoCapability]) -> DeviceInfo {
        let size = extendedSize + CapabilityChain.size(of: capabilities.map(\.raw))
        var f = flags
        if capabilities.isEmpty { f.remove(.caps) } else { f.insert(.caps) }
        return DeviceInfo(argsz: UInt32(size), flags: f, numRegions: numRegions, numIRQs: numIRQs,
                          capOffset: capabilities.isEmpty ? 0 : UInt32(extendedSize), capabilities: capabilities)
    }

    /// Bytes the complete reply needs.
    public var fullSize: Int {
        guard capOffset != nil else { return Self.standardSize }
        return Self.extendedSize + CapabilityChain.size(of: capabilities.map(\.raw))
    }

    /// The reply to send for a request whose `argsz` was `requested`.
    ///
    /// Without capabilities this is the standard 16-byte form. If the full
    /// reply does not fit, it is truncated like the kernel does, except that
    /// CAPS is cleared and `cap_offset` is 0 (the same rule as region info):
    /// `argsz` carries the full size so the client can retry.
    public func reply(forArgsz requested: UInt32) -> DeviceInfo {
        var f = flags
        if capOffset == nil || capabilities.isEmpty {
            f.remove(.caps)
            return DeviceInfo(argsz: UInt32(Self.standardSize), flags: f, numRegions: numRegions, numIRQs: numIRQs)
        }
        let full = UInt32(fullSize)
        if full <= requested {
            return .extended(flags: flags, numRegions: numRegions, numIRQs: numIRQs, capabilities: capabilities)
        }
        f.remove(.caps)
        return DeviceInfo(argsz: full, flags: f, numRegions: numRegions, numIRQs: numIRQs,
                          capOffset: requested >= UInt32(Self.extendedSize) ? 0 : nil)
    }

    /// Decodes either form: 16 bytes, or 24 with the chain at `cap_offset`.
    public init(from reader: inout WireReader) throws(ProtocolError) {
        let start = reader.position
        let length = reader.remaining
        argsz = try reader.u32()
        flags = DeviceInfoFlags(rawValue: try reader.u32())
        numRegions = try reader.u32()
        numIRQs = try reader.u32()
        capabilities = []
        guard length >= Self.extendedSize else {
            capOffset = nil
            return
        }
        let off = try reader.u32()
        _ = try reader.u32()  // pad
        capOffset = off
        if off != 0 && flags.contains(.caps) {
            let raws = try CapabilityChain.decode(reader.bytes, structStart: start, structLength: length,
                                                  firstOffset: off, fixedSize: Self.extendedSize)
            for raw in raws { capabilities.append(try DeviceInfoCapability(raw: raw)) }
        }
    }

    /// Writes the standard form, or the extended one with its chain when `capOffset` is set.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(numRegions); w.u32(numIRQs)
        guard let capOffset else { return }
        w.u32(capabilities.isEmpty ? capOffset : UInt32(Self.extendedSize))
        w.u32(0)
        CapabilityChain.encode(capabilities.map(\.raw), firstOffset: Self.extendedSize, into: &w)
    }
}
