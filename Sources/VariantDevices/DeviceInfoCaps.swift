import DeviceSpecs
import PCICore
import VFIOUserProtocol

/// Device-info capabilities from a spec (vfio-pci-core's zPCI and AtomicOps caps,
/// reference §1.7, §6). vfio-user's GET_INFO has no `cap_offset`, so only clients
/// that negotiate our `device-info-caps` extension see them
/// (docs/protocol-extensions.md); everyone else gets the standard 16-byte reply.
///
/// Spec sections (any variant, the generic device included):
/// - `"zpci": {"base": {...}, "group": {...}, "util": "text", "pfip": "hex"}`: the
///   s390 BASE v2, GROUP v2, UTIL (only if given) and PFIP capabilities, in that order;
/// - `"deviceInfo": {"atomicOps": bool}`: PCI_ATOMIC_COMP, whose flags are the
///   completer widths of `express.atomicOps`. By default it is present exactly when
///   `express.atomicOps` declares a completer width, as the kernel reports it.
public enum DeviceInfoCaps {
    /// The spec sections read here (any driver may offer them).
    public static let sectionKeys: Set<String> = ["zpci", "deviceInfo"]

    /// COMP32, COMP64, COMP128 (`VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP` flags).
    public static func atomicFlags(_ p: ExpressParameters) -> UInt32 {
        (p.atomicCompleter32 ? 0x1 : 0) | (p.atomicCompleter64 ? 0x2 : 0) | (p.atomicCompleter128 ? 0x4 : 0)
    }

    /// The capabilities the spec describes, in the kernel's order (zPCI, then AtomicOps).
    public static func capabilities(for spec: DeviceSpec) throws(SpecError) -> [DeviceInfoCapability] {
        var caps: [DeviceInfoCapability] = []
        if let z = spec.sections["zpci"] { caps += try zpci(z) }
        let c = spec.configuration
        let flags = c.express ? atomicFlags(c.expressParameters) : 0
        var wantAtomic = flags != 0
        if let d = spec.sections["deviceInfo"] {
            let o = try d.object(allowed: ["atomicOps"])
            if let a = o["atomicOps"] {
                wantAtomic = try a.bool()
                if wantAtomic && flags == 0 {
                    throw a.error("express.atomicOps declares no completer width (completer32/64/128) to report")
                }
            }
        }
        if wantAtomic { caps.append(.pciAtomicComp(flags: flags)) }
        return caps
    }

    /// Sets `device.deviceInfoCapabilities` from the spec.
    public static func apply(_ spec: DeviceSpec, to device: PCIDevice) throws(SpecError) {
        let caps = try capabilities(for: spec)
        if !caps.isEmpty { device.deviceInfoCapabilities = caps }
    }

    static func zpci(_ n: SpecNode) throws(SpecError) -> [DeviceInfoCapability] {
        let o = try n.object(allowed: ["base", "group", "util", "pfip"])
        guard let b = o["base"] else { throw n.error("missing required key 'base'") }
        guard let g = o["group"] else { throw n.error("missing required key 'group'") }
        let bo = try b.object(allowed: ["startDma", "endDma", "pchid", "vfn", "fmbLength", "pft", "gid", "fh"])
        func u(_ o: [String: SpecNode], _ k: String, _ max: UInt64, _ def: UInt64 = 0) throws(SpecError) -> UInt64 {
            try o[k]?.unsigned(max: max) ?? def
        }
        let start = try u(bo, "startDma", .max), end = try u(bo, "endDma", .max, .max)
        guard start <= end else { throw (bo["endDma"] ?? b).error("endDma is below startDma") }
        let base = ZPCIBase(startDMA: start, endDMA: end, pchid: UInt16(try u(bo, "pchid", 0xFFFF)),
                            vfn: UInt16(try u(bo, "vfn", 0xFFFF)), fmbLength: UInt16(try u(bo, "fmbLength", 0xFFFF)),
                            pft: UInt8(try u(bo, "pft", 0xFF)), gid: UInt8(try u(bo, "gid", 0xFF)),
                            fh: UInt32(try u(bo, "fh", 0xFFFF_FFFF)))
        let go = try g.object(allowed: ["dasm", "msiAddress", "refresh", "mui", "noi", "maxstbl", "version", "imaxstbl"])
        let group = ZPCIGroup(dasm: try u(go, "dasm", .max, .max), msiAddress: try u(go, "msiAddress", .max),
                              flags: (try go["refresh"]?.bool() ?? true) ? ZPCIGroup.flagRefresh : 0,
                              mui: UInt16(try u(go, "mui", 0xFFFF)), noi: UInt16(try u(go, "noi", 0xFFFF)),
                              maxstbl: UInt16(try u(go, "maxstbl", 0xFFFF, 0x800)), version: UInt8(try u(go, "version", 0xFF)),
                              imaxstbl: UInt16(try u(go, "imaxstbl", 0xFFFF)))
        var caps = [base.capability, group.capability]
        if let s = o["util"] {
            let text = Array(try s.string().utf8)
            guard text.count <= utilLength, text.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                throw s.error("must be at most \(utilLength) printable ASCII characters (sent in EBCDIC)")
            }
            caps.append(ZPCISizedBytes.util(ebcdic(text, padTo: utilLength)).capability)
        }
        var pfip = [UInt8](repeating: 0, count: pfipLength)
        if let p = o["pfip"] {
            pfip = try p.hexBytes()
            guard pfip.count == pfipLength else { throw p.error("must be \(pfipLength) bytes (CLP_PFIP_NR_SEGMENTS)") }
        }
        caps.append(ZPCISizedBytes.pfip(pfip).capability)
        return caps
    }

    /// `CLP_UTIL_STR_LEN`: bytes of the utility string.
    public static let utilLength = 64
    /// `CLP_PFIP_NR_SEGMENTS`: PFIP bytes.
    public static let pfipLength = 4

    /// ASCII text in EBCDIC (code page 037), space-padded to `length`.
    public static func ebcdic(_ ascii: [UInt8], padTo length: Int) -> [UInt8] {
        var out = ascii.map(ebcdic)
        out += [UInt8](repeating: 0x40, count: max(0, length - out.count))
        return out
    }

    static func ebcdic(_ a: UInt8) -> UInt8 {
        switch a {
        case 0x30...0x39: return 0xF0 + (a - 0x30)
        case 0x41...0x49: return 0xC1 + (a - 0x41)
        case 0x4A...0x52: return 0xD1 + (a - 0x4A)
        case 0x53...0x5A: return 0xE2 + (a - 0x53)
        case 0x61...0x69: return 0x81 + (a - 0x61)
        case 0x6A...0x72: return 0x91 + (a - 0x6A)
        case 0x73...0x7A: return 0xA2 + (a - 0x73)
        case 0x2E: return 0x4B  // .
        case 0x2D: return 0x60  // -
        case 0x5F: return 0x6D  // _
        case 0x2F: return 0x61  // /
        case 0x3A: return 0x7A  // :
        case 0x2C: return 0x6B  // ,
        case 0x28: return 0x4D  // (
        case 0x29: return 0x5D  // )
        default: return 0x40    // space (and anything without a mapping here)
        }
    }
}
