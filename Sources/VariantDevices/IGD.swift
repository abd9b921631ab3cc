import DeviceSpecs
import PCICore
import VFIOUserProtocol

/// Intel integrated graphics with its OpRegion (reference §2, §9.1).
///
/// Matches like the kernel's `vfio_pci_is_intel_display()`: vendor 0x8086, base
/// class 0x03 (VGA 0x0300, "other display" 0x0380, ...). The probe needs what the
/// host firmware would provide: an OpRegion (`igd.opRegion`: an image file or a
/// generated default) at a non-zero address (`igd.asls`); without them the device
/// is a plain GPU (the kernel's -ENODEV) and the registry falls through.
///
/// Device-specific regions, read-only, type 0x80008086, in this order:
/// 1. OpRegion (subtype 1): the kernel's view of the image (see `OpRegion`);
/// 2. host bridge config (subtype 2), 256 bytes, if `igd.hostBridge` is given;
/// 3. LPC bridge config (subtype 3), 256 bytes, if `igd.lpcBridge` is given too
///    (the kernel stops at the first missing bridge, keeping what it registered).
/// Config dword 0xFC (ASLS) reads the OpRegion's address and is a virtual scratch
/// register; optional GMCH (0x50) and BDSM (0x5C) are read-only.
public struct IGDDriver: VariantDriver {
    /// The IGD driver (it has no state).
    public init() {}
    /// "igd".
    public var name: String { "igd" }
    /// One line for `vfu variants`.
    public var summary: String { "Intel integrated graphics: OpRegion, host/LPC bridge config regions, ASLS (config 0xFC)" }
    /// Intel display controllers (class 0x03).
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x8086, classCode: 0x03_0000, classMask: 0xFF_0000)] }
    /// Reads the `igd` section.
    public var sectionKeys: Set<String> { ["igd"] }

    /// `VFIO_REGION_TYPE_PCI_VENDOR_TYPE | PCI_VENDOR_ID_INTEL`.
    public static let regionType: UInt32 = 0x8000_0000 | 0x8086
    /// The OpRegion region's subtype.
    public static let opRegionSubtype: UInt32 = 1
    /// The host bridge config region's subtype.
    public static let hostConfigSubtype: UInt32 = 2
    /// The LPC bridge config region's subtype.
    public static let lpcConfigSubtype: UInt32 = 3
    /// ASLS: the OpRegion's host address (config 0xFC).
    public static let aslsOffset = 0xFC
    /// GMCH Graphics Control (config 0x50).
    public static let gmchOffset = 0x50
    /// BDSM Base of Data Stolen Memory (config 0x5C).
    public static let bdsmOffset = 0x5C

    static let keys: Set<String> = ["asls", "opRegion", "hostBridge", "lpcBridge", "gmch", "bdsm"]

    /// Declines without an `igd` section, an OpRegion or a usable ASLS, as the kernel would.
    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        guard let n = spec.sections["igd"] else {
            return .decline("the spec has no 'igd' section: an IGD needs an OpRegion (igd.opRegion) and its address (igd.asls)")
        }
        let o = n.members
        guard o["opRegion"] != nil else {
            return .decline("igd.opRegion is missing: no OpRegion image file and no generated default (a discrete GPU has none)")
        }
        guard let a = o["asls"] else { return .decline("igd.asls is missing: ASLS (config 0xFC) would read 0, meaning no OpRegion") }
        if let v = try? a.unsigned(), v == 0 || v >= 0xFFFF_FFFF {
            return .decline("igd.asls is \(hex(v)): no OpRegion at that address (the kernel's -ENODEV)")
        }
        return .accept
    }

    /// The core device plus the OpRegion, bridge regions and ASLS/GMCH/BDSM registers.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        guard let n = spec.sections["igd"] else { throw spec.error("igd", "missing") }
        let o = try n.object(allowed: Self.keys)
        guard let aslsNode = o["asls"] else { throw n.error("missing required key 'asls'") }
        let asls = UInt32(try aslsNode.unsigned(max: 0xFFFF_FFFE))
        guard asls != 0 else { throw aslsNode.error("must not be 0 (0 means there is no OpRegion)") }
        guard let opNode = o["opRegion"] else { throw n.error("missing required key 'opRegion'") }
        let image = try Self.image(opNode, spec: spec, asls: asls)
        let opRegion: OpRegion
        do { opRegion = try OpRegion(image: image, hostAddress: asls) } catch { throw opNode.error(error.reason) }
        let host = try o["hostBridge"].map { n throws(SpecError) in try Self.bridge(n, classCode: 0x06_0000, what: "host bridge") }
        let lpc = try o["lpcBridge"].map { n throws(SpecError) in try Self.bridge(n, classCode: 0x06_0100, what: "ISA (LPC) bridge") }

        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)

        var registers: [(String, Int, UInt32, UInt32)] = [("asls", Self.aslsOffset, asls, 0xFFFF_FFFF)]
        if let g = o["gmch"] { registers.append(("gmch", Self.gmchOffset, UInt32(try g.unsigned(max: 0xFFFF)), 0)) }
        if let b = o["bdsm"] { registers.append(("bdsm", Self.bdsmOffset, UInt32(try b.unsigned(max: 0xFFFF_FFFF)), 0)) }
        for (key, offset, value, writeMask) in registers {
            if let id = device.placedCapabilities.standardCapability(overlapping: offset..<(offset + 4)) {
                throw (o[key] ?? n).error("config 0x\(String(offset, radix: 16)) lies inside capability 0x\(String(id, radix: 16)); move the capability (give it an offset)")
            }
            // ASLS is a virtual scratch register (the kernel's PCI_CAP_ID_INVALID_VIRT);
            // GMCH and BDSM are read-only copies of the host's values.
            device.interceptConfig(dword: offset, value: value, writeMask: writeMask, hook: ConfigSpace.Hook())
        }

        device.addDeviceSpecificRegion(size: UInt64(opRegion.view.count), type: Self.regionType, subtype: Self.opRegionSubtype,
                                       readable: true, writable: false, backing: .handler(ReadOnlyBytes(opRegion.view)))
        if let host {
            device.addDeviceSpecificRegion(size: 256, type: Self.regionType, subtype: Self.hostConfigSubtype,
                                           readable: true, writable: false, backing: .handler(ReadOnlyBytes(Self.bridgeConfig(host))))
            if let lpc {
                device.addDeviceSpecificRegion(size: 256, type: Self.regionType, subtype: Self.lpcConfigSubtype,
                                               readable: true, writable: false, backing: .handler(ReadOnlyBytes(Self.bridgeConfig(lpc))))
            }
        }
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }

    /// The OpRegion image: `{"file": "name"}` (relative to the spec) or
    /// `{"generate": true | {"version", "vbtSize", "extendedVBT", "mailboxes", "vbtName"}}`.
    static func image(_ n: SpecNode, spec: DeviceSpec, asls: UInt32) throws(SpecError) -> [UInt8] {
        let o = try n.object(allowed: ["file", "generate"])
        switch (o["file"], o["generate"]) {
        case (let f?, nil):
            let name = try f.string()
            guard let bytes = spec.readNamedFile(name) else { throw f.error("cannot read '\(name)' (relative to \(spec.directory))") }
            return bytes
        case (nil, let g?):
            var opts = OpRegion.Generated()
            if case .bool(let b) = g.value {
                guard b else { throw g.error("must be true or an object") }
            } else {
                let go = try g.object(allowed: ["version", "vbtSize", "extendedVBT", "mailboxes", "vbtName"])
                if let v = go["version"] { opts.version = UInt16(try v.unsigned(max: 0xFFFF)) }
                if let s = go["vbtSize"] { opts.vbtSize = try s.int(in: 0x46...0xFFFF) }
                if let e = go["extendedVBT"] { opts.extendedVBT = try e.bool() }
                if let m = go["mailboxes"] { opts.mailboxes = UInt32(try m.unsigned(max: 0xFFFF_FFFF)) }
                if let nm = go["vbtName"] { opts.vbtName = try nm.string() }
                if opts.usesExtendedVBT && opts.version < 0x0200 {
                    throw (go["version"] ?? g).error("an extended VBT (asked for, or a VBT above 6 KiB) needs version 0x0200 or later")
                }
            }
            return OpRegion.generate(opts, hostAddress: asls)
        default:
            throw n.error("give exactly one of 'file' (an OpRegion image) and 'generate'")
        }
    }

    static func bridge(_ n: SpecNode, classCode: UInt32, what: String) throws(SpecError) -> PCIIdentity {
        let o = try n.object(allowed: ["vendor", "device", "revision", "subsystemVendor", "subsystem", "classCode"])
        guard let d = o["device"] else { throw n.error("missing required key 'device'") }
        let vendor = UInt16(try o["vendor"]?.unsigned(max: 0xFFFF) ?? 0x8086)
        // vfio_pci_igd_cfg_init: a bridge that is not Intel, or of the wrong class, is -EINVAL (the open fails).
        guard vendor == 0x8086 else { throw o["vendor"]!.error("the \(what) must be Intel (0x8086), as the kernel requires") }
        let cls = UInt32(try o["classCode"]?.unsigned(max: 0xFF_FFFF) ?? UInt64(classCode))
        guard cls >> 8 == classCode >> 8 else {
            throw o["classCode"]!.error("a \(what) has class 0x\(String(classCode >> 8, radix: 16))xx, as the kernel requires")
        }
        return PCIIdentity(vendor: vendor, device: UInt16(try d.unsigned(max: 0xFFFF)),
                           subsystemVendor: UInt16(try o["subsystemVendor"]?.unsigned(max: 0xFFFF) ?? 0),
                           subsystem: UInt16(try o["subsystem"]?.unsigned(max: 0xFFFF) ?? 0),
                           revision: UInt8(try o["revision"]?.unsigned(max: 0xFF) ?? 0), classCode: cls)
    }

    /// A synthetic 256-byte type-0 config header for a bridge at 00:00.0 or 00:1f.0.
    public static func bridgeConfig(_ id: PCIIdentity) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 256)
        c.setLE16(id.vendor, at: 0x00)
        c.setLE16(id.device, at: 0x02)
        c.setLE16(0x0006, at: 0x04)   // memory and bus master enabled, as firmware leaves them
        c[0x08] = id.revision
        c[0x09] = UInt8(id.classCode & 0xFF)
        c[0x0A] = UInt8((id.classCode >> 8) & 0xFF)
        c[0x0B] = UInt8(id.classCode >> 16)
        c[0x0E] = 0x00                // header type 0
        c.setLE16(id.subsystemVendor, at: 0x2C)
        c.setLE16(id.subsystem, at: 0x2E)
        return c
    }
}
