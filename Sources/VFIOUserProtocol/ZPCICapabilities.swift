// s390 zPCI device-info capabilities (reference §4.6; Linux vfio_zdev.h). They
// travel in `DeviceInfoCapability.unknown` with their `DeviceInfoCapabilityID`;
// these types give them a typed layout on both sides. Only reachable through our
// `device-info-caps` extension (docs/protocol-extensions.md).

/// `VFIO_DEVICE_INFO_CAP_ZPCI_BASE`, version 2 (40 bytes with the header).
public struct ZPCIBase: Hashable, Sendable {
    /// Start of the DMA address space (`start_dma`).
    public var startDMA: UInt64
    /// End of the DMA address space (`end_dma`).
    public var endDMA: UInt64
    /// Physical channel ID (`pchid`).
    public var pchid: UInt16
    /// Virtual function number (`vfn`).
    public var vfn: UInt16
    /// Function measurement block length (`fmb_length`).
    public var fmbLength: UInt16
    /// PCI function type (`pft`).
    public var pft: UInt8
    /// Function group ID (`gid`).
    public var gid: UInt8
    /// Function handle (version 2).
    public var fh: UInt32

    /// A capability with the given fields.
    public init(startDMA: UInt64, endDMA: UInt64, pchid: UInt16, vfn: UInt16, fmbLength: UInt16, pft: UInt8, gid: UInt8,
                fh: UInt32) {
        self.startDMA = startDMA
        self.endDMA = endDMA
        self.pchid = pchid
        self.vfn = vfn
        self.fmbLength = fmbLength
        self.pft = pft
        self.gid = gid
        self.fh = fh
    }

    /// The capability in its untyped form.
    public var capability: DeviceInfoCapability {
        var w = WireWriter(capacity: 32)
        w.u64(startDMA); w.u64(endDMA); w.u16(pchid); w.u16(vfn); w.u16(fmbLength); w.u8(pft); w.u8(gid)
        w.u32(fh); w.u32(0)  // fh, then the struct's tail padding
        return .unknown(id: DeviceInfoCapabilityID.zpciBase, version: 2, body: w.bytes)
    }

    /// Decodes version 1 (fh = 0) or 2.
    public init?(_ cap: DeviceInfoCapability) {
        guard case .unknown(DeviceInfoCapabilityID.zpciBase, let v, let body) = cap, v == 1 || v == 2 else { return nil }
        var r = WireReader(body)
        do {
            startDMA = try r.u64(); endDMA = try r.u64(); pchid = try r.u16(); vfn = try r.u16()
            fmbLength = try r.u16(); pft = try r.u8(); gid = try r.u8()
            fh = v == 2 ? try r.u32() : 0
        } catch { return nil }
    }
}

/// `VFIO_DEVICE_INFO_CAP_ZPCI_GROUP`, version 2 (48 bytes with the header).
public struct ZPCIGroup: Hashable, Sendable {
    /// `flags` bit: the function needs a refresh of its IOTLB entries.
    public static let flagRefresh: UInt64 = 0x1
    /// DMA address space mask (`dasm`).
    public var dasm: UInt64
    /// MSI address (`msi_addr`).
    public var msiAddress: UInt64
    /// Group flags (`flagRefresh`).
    public var flags: UInt64
    /// Minimum update interval (`mui`).
    public var mui: UInt16
    /// Maximum number of MSI-X interrupts (`noi`).
    public var noi: UInt16
    /// Maximum store block length (`maxstbl`).
    public var maxstbl: UInt16
    /// Supported PCI version (`version`).
    public var version: UInt8
    /// Max interpreted store block length (version 2).
    public var imaxstbl: UInt16

    /// A capability with the given fields.
    public init(dasm: UInt64, msiAddress: UInt64, flags: UInt64, mui: UInt16, noi: UInt16, maxstbl: UInt16,
                version: UInt8, imaxstbl: UInt16) {
        self.dasm = dasm
        self.msiAddress = msiAddress
        self.flags = flags
        self.mui = mui
        self.noi = noi
        self.maxstbl = maxstbl
        self.version = version
        self.imaxstbl = imaxstbl
    }

    /// The capability in its untyped form.
    public var capability: DeviceInfoCapability {
        var w = WireWriter(capacity: 40)
        w.u64(dasm); w.u64(msiAddress); w.u64(flags); w.u16(mui); w.u16(noi); w.u16(maxstbl); w.u8(version)
        w.u8(0); w.u16(imaxstbl); w.zeros(6)  // reserved, imaxstbl, tail padding to 48
        return .unknown(id: DeviceInfoCapabilityID.zpciGroup, version: 2, body: w.bytes)
    }

    /// The typed group, or nil when `cap` is not a ZPCI_GROUP of version 1 or 2, or is short.
    public init?(_ cap: DeviceInfoCapability) {
        guard case .unknown(DeviceInfoCapabilityID.zpciGroup, let v, let body) = cap, v == 1 || v == 2 else { return nil }
        var r = WireReader(body)
        do {
            dasm = try r.u64(); msiAddress = try r.u64(); flags = try r.u64(); mui = try r.u16(); noi = try r.u16()
            maxstbl = try r.u16(); version = try r.u8()
            if v == 2 { try r.skip(1); imaxstbl = try r.u16() } else { imaxstbl = 0 }
        } catch { return nil }
    }
}

/// `VFIO_DEVICE_INFO_CAP_ZPCI_UTIL` (id 3) and `ZPCI_PFIP` (id 4), version 1:
/// a u32 size and that many bytes (the utility string in EBCDIC, or the PCI
/// function path segments).
public struct ZPCISizedBytes: Hashable, Sendable {
    /// `DeviceInfoCapabilityID.zpciUtil` or `.zpciPFIP`.
    public var id: UInt16
    /// The bytes after the u32 size.
    public var bytes: [UInt8]

    /// A capability with the given id and bytes.
    public init(id: UInt16, bytes: [UInt8]) {
        self.id = id
        self.bytes = bytes
    }

    /// The utility string (`CLP_UTIL_STR_LEN` = 64 bytes, EBCDIC).
    public static func util(_ bytes: [UInt8]) -> ZPCISizedBytes { ZPCISizedBytes(id: DeviceInfoCapabilityID.zpciUtil, bytes: bytes) }
    /// The PCI function path (`CLP_PFIP_NR_SEGMENTS` = 4 segments).
    public static func pfip(_ bytes: [UInt8]) -> ZPCISizedBytes { ZPCISizedBytes(id: DeviceInfoCapabilityID.zpciPFIP, bytes: bytes) }

    /// The capability in its untyped form.
    public var capability: DeviceInfoCapability {
        var w = WireWriter(capacity: 4 + bytes.count)
        w.u32(UInt32(bytes.count)); w.append(bytes)
        return .unknown(id: id, version: 1, body: w.bytes)
    }

    /// The typed bytes, or nil when `cap` is not a ZPCI_UTIL or ZPCI_PFIP of version 1, or is short.
    public init?(_ cap: DeviceInfoCapability) {
        guard case .unknown(let id, 1, let body) = cap,
              id == DeviceInfoCapabilityID.zpciUtil || id == DeviceInfoCapabilityID.zpciPFIP else { return nil }
        var r = WireReader(body)
        guard let n = try? r.u32(), let b = try? r.bytes(Int(n)) else { return nil }
        self.id = id
        bytes = Array(b)
    }
}
