import DeviceSpecs
import PCICore
import VFIOUserProtocol

/// The POWER9 NVLink2 pair (reference §3, §9.2): a V100 GPU whose RAM the platform
/// maps on the system bus, and the IBM NPU2 bridge that links to it. Config space
/// cannot show NVLink; the platform (device tree) does, so both probes need the
/// spec's `nvlink2` section, and without it the registry falls through to generic.
///
/// GPU (`nvlink2-gpu`): region type 0x800010DE subtype 1 (NVLINK2_RAM): `ramWindow`
/// bytes (DT `memory-region` reg[1]) of which the first `ramSize` are shared
/// memory a client mmaps (one sparse area); the rest reads 0xFF. Capability
/// NVLINK2_SSATGT carries `tgt` (`ibm,device-tgt-addr`).
public struct NVLink2GPUDriver: VariantDriver {
    /// The NVLink2 GPU driver (it has no state).
    public init() {}
    /// "nvlink2-gpu".
    public var name: String { "nvlink2-gpu" }
    /// One line for `vfu variants`.
    public var summary: String { "POWER9 NVLink2 V100 GPU: GPU RAM region (mmap, SSATGT)" }
    /// The kernel's V100 SXM2 IDs.
    public var idTable: [PCIMatch] { [0x1DB1, 0x1DB5, 0x1DB8, 0x1DF5].map { PCIMatch(vendor: 0x10DE, device: $0) } }
    /// Reads the `nvlink2` section.
    public var sectionKeys: Set<String> { ["nvlink2"] }

    /// `VFIO_REGION_TYPE_PCI_VENDOR_TYPE | PCI_VENDOR_ID_NVIDIA`.
    public static let regionType: UInt32 = 0x8000_0000 | 0x10DE
    /// The GPU RAM region's subtype.
    public static let ramSubtype: UInt32 = 1

    /// Declines unless the `nvlink2` section gives the GPU RAM window.
    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        NVLink2Platform.probe(spec, describes: "an NPU link (memory-region, ibm,device-tgt-addr)",
                              requires: ["ramWindow": "no memory-region for the GPU RAM"])
    }

    /// The core device plus the GPU RAM region.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let link = try NVLink2Platform.section(spec, keys: ["ramWindow", "ramSize"], required: ["ramWindow"])
        let w = link.members["ramWindow"]!
        let window = try w.unsigned(max: 1 << 40)
        guard window > 0, window % 4096 == 0 else { throw w.error("must be a non-zero multiple of 4 KiB") }
        let ram = try link.members["ramSize"]?.unsigned(max: window) ?? window
        guard ram > 0, ram % 4096 == 0 else { throw link.members["ramSize"]!.error("must be a non-zero multiple of 4 KiB") }
        return try NVLink2Platform.build(spec) { device throws(SpecError) in
            let index = device.addDeviceSpecificRegion(size: window, type: Self.regionType, subtype: Self.ramSubtype,
                                                       readable: true, writable: true,
                                                       extraCapabilities: [.nvlink2SSATGT(tgt: link.tgt)],
                                                       backing: .handler(ReadOnlyBytes([])))
            _ = try WindowedMemory.install(on: device, region: index, name: "\(spec.configuration.name)-gpu-ram", length: ram,
                                           spec: spec, field: "nvlink2.ramSize")
        }
    }
}

/// NPU2 bridge (`nvlink2-npu`): region type 0x80001014 subtype 1 (NVLINK2_ATSD):
/// `atsdSize` bytes (64 KiB, the POWER page) of mmap-able shared memory, or 0 when
/// the PHB has no ATSD register (the region is still there, for its capabilities).
/// Capabilities NVLINK2_SSATGT (the same `tgt` as the GPU: that is how userspace
/// pairs them) then NVLINK2_LNKSPD (`linkSpeed`, `ibm,nvlink-speed`).
public struct NVLink2NPUDriver: VariantDriver {
    /// The NPU driver (it has no state).
    public init() {}
    /// "nvlink2-npu".
    public var name: String { "nvlink2-npu" }
    /// One line for `vfu variants`.
    public var summary: String { "POWER9 NPU2 NVLink bridge: ATSD region (mmap, SSATGT, LNKSPD)" }
    /// The POWER9 NPU2 bridge ID.
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x1014, device: 0x04EA)] }
    /// Reads the `nvlink2` section.
    public var sectionKeys: Set<String> { ["nvlink2"] }

    /// `VFIO_REGION_TYPE_PCI_VENDOR_TYPE | PCI_VENDOR_ID_IBM`.
    public static let regionType: UInt32 = 0x8000_0000 | 0x1014
    /// The ATSD region's subtype.
    public static let atsdSubtype: UInt32 = 1

    /// Declines unless the `nvlink2` section gives the link speed.
    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        NVLink2Platform.probe(spec, describes: "a GPU behind this NPU (ibm,nvlink, ibm,device-tgt-addr)",
                              requires: ["linkSpeed": "no ibm,nvlink-speed (the link would not work)"])
    }

    /// The core device plus the ATSD region.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let link = try NVLink2Platform.section(spec, keys: ["linkSpeed", "atsdSize"], required: ["linkSpeed"])
        let speed = UInt32(try link.members["linkSpeed"]!.unsigned(max: 0xFFFF_FFFF))
        let atsdNode = link.members["atsdSize"]
        let atsd = try atsdNode?.unsigned(max: 1 << 30) ?? 0x10000
        guard atsd % 4096 == 0 else { throw atsdNode!.error("must be a multiple of 4 KiB (0 = no ATSD)") }
        let caps: [RegionCapability] = [.nvlink2SSATGT(tgt: link.tgt), .nvlink2LinkSpeed(speed)]
        return try NVLink2Platform.build(spec) { device throws(SpecError) in
            if atsd == 0 {
                device.addDeviceSpecificRegion(size: 0, type: Self.regionType, subtype: Self.atsdSubtype, readable: true,
                                               writable: true, extraCapabilities: caps, backing: .handler(ReadOnlyBytes([])))
            } else {
                let mem: SharedMemory
                do { mem = try SharedMemory(name: "\(spec.configuration.name)-atsd", size: Int(atsd)) } catch {
                    throw (atsdNode ?? link.node).error("cannot allocate \(atsd) bytes of shared memory: \(error)")
                }
                device.addDeviceSpecificRegion(size: atsd, type: Self.regionType, subtype: Self.atsdSubtype, readable: true,
                                               writable: true, mmappable: true, extraCapabilities: caps, backing: .memory(mem))
            }
        }
    }
}

/// What both halves of an NVLink2 pair share: the platform's `nvlink2` section (config
/// space cannot show NVLink; the device tree does), its `tgt` (`ibm,device-tgt-addr`,
/// how userspace pairs a GPU with its NPU), and how either device is put together.
enum NVLink2Platform {
    /// Accepts a spec whose `nvlink2` section has `tgt` and every key in `requires`
    /// (key: what its absence means on the platform).
    static func probe(_ spec: DeviceSpec, describes what: String, requires: [String: String]) -> ProbeResult {
        guard let n = spec.sections["nvlink2"] else {
            return .decline("no 'nvlink2' section: the platform does not describe \(what)")
        }
        let o = n.members
        guard o["tgt"] != nil else { return .decline("nvlink2.tgt is missing: no ibm,device-tgt-addr for the link") }
        for (key, why) in requires.sorted(by: { $0.key < $1.key }) where o[key] == nil {
            return .decline("nvlink2.\(key) is missing: \(why)")
        }
        return .accept
    }

    /// The section, checked: only `tgt` and `keys`, with `tgt` and `required` present.
    static func section(_ spec: DeviceSpec, keys: Set<String>, required: [String]) throws(SpecError)
        -> (node: SpecNode, members: [String: SpecNode], tgt: UInt64)
    {
        guard let n = spec.sections["nvlink2"] else { throw spec.error("nvlink2", "missing") }
        let o = try n.object(allowed: keys.union(["tgt"]))
        for key in ["tgt"] + required where o[key] == nil { throw n.error("missing required key '\(key)'") }
        return (n, o, try o["tgt"]!.unsigned())
    }

    /// The core device with the doorbell model, `addRegions`, then the device-info caps.
    static func build(_ spec: DeviceSpec, addRegions: (PCIDevice) throws(SpecError) -> Void) throws(SpecError) -> PCIDevice {
        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)
        try addRegions(device)
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }
}
