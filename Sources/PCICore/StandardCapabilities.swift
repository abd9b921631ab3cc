/// Builders for the capabilities the core knows how to emulate. Each returns the
/// capability body with the write policy vfio-pci-core applies to it.
extension PCICapability {
    /// Power Management (version 3, D0/D3hot only, No_Soft_Reset set so a D3hot→D0
    /// transition keeps configuration). PowerState bits are writable.
    public static func powerManagement(offset: Int? = nil) -> PCICapability {
        var body = [UInt8](repeating: 0, count: 6)
        body.setLE16(0x0003, at: 0)          // PMC: version 3
        body.setLE16(0x0008, at: 2)          // PMCSR: No_Soft_Reset
        var wm = [UInt8](repeating: 0, count: 6)
        wm.setLE16(0x0003, at: 2)            // PowerState
        return PCICapability(id: powerManagementID, offset: offset, body: body, writeMask: wm)
    }

    /// MSI with `vectors` (1, 2, 4, ... 32) and optional 64-bit address and per-vector masking.
    public static func msi(vectors: Int, address64: Bool, perVectorMask: Bool, offset: Int? = nil) -> PCICapability {
        let mmc = UInt16(max(0, Int.bitWidth - 1 - max(vectors, 1).leadingZeroBitCount))
        var control: UInt16 = mmc << 1
        if address64 { control |= 0x0080 }
        if perVectorMask { control |= 0x0100 }
        // body: control(2) addrLo(4) [addrHi(4)] data(2) [reserved(2) mask(4) pending(4)]
        var len = 2 + 4 + (address64 ? 4 : 0) + 2
        if perVectorMask { len += 2 + 4 + 4 }
        var body = [UInt8](repeating: 0, count: len)
        var wm = body
        body.setLE16(control, at: 0)
        wm.setLE16(0x0071, at: 0)            // Enable + Multiple Message Enable
        wm.setLE32(0xFFFF_FFFC, at: 2)       // address low
        var o = 6
        if address64 { wm.setLE32(0xFFFF_FFFF, at: o); o += 4 }
        wm.setLE16(0xFFFF, at: o)            // data
        o += 2
        if perVectorMask {
            o += 2
            let bits: UInt32 = vectors >= 32 ? 0xFFFF_FFFF : (UInt32(1) << UInt32(vectors)) - 1
            wm.setLE32(bits, at: o)          // mask bits; pending bits are read-only
        }
        return PCICapability(id: msiID, offset: offset, body: body, writeMask: wm)
    }

    /// MSI-X with `vectors` entries; table and PBA in BAR `bar` at the given offsets.
    /// Enable and Function Mask are writable so config-space-only clients can use them.
    public static func msix(vectors: Int, tableBAR: Int, tableOffset: UInt32, pbaBAR: Int, pbaOffset: UInt32,
                            offset: Int? = nil) -> PCICapability {
        var body = [UInt8](repeating: 0, count: 10)
        var wm = body
        body.setLE16(UInt16(vectors - 1), at: 0)
        wm.setLE16(0xC000, at: 0)
        body.setLE32(tableOffset | UInt32(tableBAR), at: 2)
        body.setLE32(pbaOffset | UInt32(pbaBAR), at: 6)
        return PCICapability(id: msixID, offset: offset, body: body, writeMask: wm)
    }

    /// PCI Express capability (version 2) of an endpoint.
    public static func express(_ p: ExpressParameters, offset: Int? = nil) -> PCICapability {
        var body = [UInt8](repeating: 0, count: 0x3C - 2)
        var wm = body
        var w1c = body
        func put16(_ v: UInt16, _ capOff: Int, _ b: inout [UInt8]) { b.setLE16(v, at: capOff - 2) }
        func put32(_ v: UInt32, _ capOff: Int, _ b: inout [UInt8]) { b.setLE32(v, at: capOff - 2) }
        put16(0x0002, 0x02, &body)                                    // version 2, endpoint
        var devcap: UInt32 = UInt32(p.maxPayloadSizeSupported & 7)
        devcap |= 1 << 15                                             // role-based error reporting
        if p.functionLevelReset { devcap |= 1 << 28 }
        put32(devcap, 0x04, &body)
        put16(0x2810, 0x08, &body)                                    // DevCtl: MRRS 512, relaxed ordering, ext tag off
        put16(0xFDFF & ~0x0200, 0x08, &wm)                            // all but Phantom Functions; FLR handled by a hook
        put16(0x000F, 0x0A, &w1c)                                     // DevSta error bits are W1C
        let linkCap = UInt32(p.linkSpeed & 0xF) | UInt32(p.linkWidth & 0x3F) << 4
        put32(linkCap, 0x0C, &body)
        put16(0x01C3 & 0x00C3, 0x10, &wm)                             // LinkCtl: ASPM, RCB, common clock
        put16(UInt16(p.linkSpeed & 0xF) | UInt16(p.linkWidth & 0x3F) << 4, 0x12, &body)
        var devcap2: UInt32 = 0x0000_0010                            // completion timeout disable supported
        if p.atomicCompleter32 { devcap2 |= 0x80 }
        if p.atomicCompleter64 { devcap2 |= 0x100 }
        if p.atomicCompleter128 { devcap2 |= 0x200 }
        if p.atomicRouting { devcap2 |= 0x40 }
        put32(devcap2, 0x24, &body)
        put16(0xFFDF & 0x04FF, 0x28, &wm)                            // DevCtl2 except ARI forwarding
        put32(UInt32(((1 << (p.linkSpeed & 0xF)) - 1) << 1 & 0xFE), 0x2C, &body) // supported speeds vector
        put16(UInt16(p.linkSpeed & 0xF), 0x30, &body)                // target link speed
        put16(0x000F, 0x30, &wm)
        return PCICapability(id: expressID, offset: offset, body: body, writeMask: wm, w1cMask: w1c)
    }

    /// Vendor-specific capability: a length byte then `data` (read/write pass like vfio).
    public static func vendorSpecific(_ data: [UInt8], writable: Bool = false, offset: Int? = nil) -> PCICapability {
        let body = [UInt8(3 + data.count)] + data
        let wm = [0] + [UInt8](repeating: writable ? 0xFF : 0, count: data.count)
        return PCICapability(id: vendorSpecificID, offset: offset, body: body, writeMask: wm)
    }
}

/// What the PCI Express capability advertises.
public struct ExpressParameters: Sendable, Equatable {
    /// DevCap Function Level Reset Capable (writing Initiate FLR resets).
    public var functionLevelReset = true
    /// 1 = 2.5 GT/s ... 5 = 32 GT/s.
    public var linkSpeed = 3
    /// Negotiated/maximum link width (lanes).
    public var linkWidth = 8
    /// DevCap Max_Payload_Size Supported (0 = 128 bytes, 1 = 256, ...).
    public var maxPayloadSizeSupported = 1
    /// DevCap2 32-bit AtomicOp Completer.
    public var atomicCompleter32 = false
    /// DevCap2 64-bit AtomicOp Completer.
    public var atomicCompleter64 = false
    /// DevCap2 128-bit CAS Completer.
    public var atomicCompleter128 = false
    /// DevCap2 AtomicOp Routing.
    public var atomicRouting = false
    /// Gen3 x8, FLR, 256-byte payload, no AtomicOps.
    public init() {}
}

extension PCIExtendedCapability {
    /// Device Serial Number with `serial`.
    public static func serialNumber(_ serial: UInt64, offset: Int? = nil) -> PCIExtendedCapability {
        var body = [UInt8](repeating: 0, count: 8)
        body.setLE64(serial, at: 0)
        return PCIExtendedCapability(id: serialNumberID, offset: offset, body: body)
    }

    /// Vendor-specific extended capability: VSEC header (id, rev, length) then data.
    public static func vendorSpecific(vsecID: UInt16, revision: UInt8, data: [UInt8], offset: Int? = nil) -> PCIExtendedCapability {
        var body = [UInt8](repeating: 0, count: 4)
        let len = UInt32(8 + data.count)
        body.setLE32(UInt32(vsecID) | UInt32(revision & 0xF) << 16 | len << 20, at: 0)
        return PCIExtendedCapability(id: vendorSpecificID, offset: offset, body: body + data)
    }

    /// PASID: max width (bits), execute and privileged-mode support. Control (enable,
    /// execute, privileged) is writable.
    public static func pasid(maxWidth: Int, execute: Bool, privileged: Bool, offset: Int? = nil) -> PCIExtendedCapability {
        var body = [UInt8](repeating: 0, count: 4)
        var cap = UInt16(maxWidth & 0x1F) << 8
        if execute { cap |= 0x2 }
        if privileged { cap |= 0x4 }
        body.setLE16(cap, at: 0)
        var wm = [UInt8](repeating: 0, count: 4)
        wm.setLE16(0x0001 | (execute ? 0x2 : 0) | (privileged ? 0x4 : 0), at: 2)
        return PCIExtendedCapability(id: pasidID, offset: offset, body: body, writeMask: wm)
    }

    /// Designated vendor-specific extended capability: DVSEC headers 1 and 2, then data.
    public static func designatedVendorSpecific(vendor: UInt16, revision: UInt8, dvsecID: UInt16, data: [UInt8],
                                                offset: Int? = nil) -> PCIExtendedCapability {
        var body = [UInt8](repeating: 0, count: 6)
        let len = UInt32(10 + data.count)
        body.setLE32(UInt32(vendor) | UInt32(revision & 0xF) << 16 | len << 20, at: 0)
        body.setLE16(dvsecID, at: 4)
        return PCIExtendedCapability(id: PCIExtendedCapability.dvsecID, offset: offset, body: body + data)
    }
}
