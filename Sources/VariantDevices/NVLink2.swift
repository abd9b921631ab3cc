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
    public init() {}
    public var name: String { "nvlink2-gpu" }
    public var summary: String { "POWER9 NVLink2 V100 GPU: GPU RAM region (mmap, SSATGT)" }
    public var idTable: [PCIMatch] { [0x1DB1, 0x1DB5, 0x1DB8, 0x1DF5].map { PCIMatch(vendor: 0x10DE, device: $0) } }
    public var sectionKeys: Set<String> { ["nvlink2"] }

    public static let regionType: UInt32 = 0x8000_0000 | 0x10DE
    public static let ramSubtype: UInt32 = 1

    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        guard let n = spec.sections["nvlink2"] else {
            return .decline("no 'nvlink2' section: the platform does not describe an NPU link (memory-region, ibm,device-tgt-addr)")
        }
        let o = n.members
        guard o["tgt"] != nil else { return .decline("nvlink2.tgt is missing: no ibm,device-tgt-addr for the link") }
        guard o["ramWindow"] != nil else { return .decline("nvlink2.ramWindow is missing: no memory-region for the GPU RAM") }
        return .accept
    }

    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        guard let n = spec.sections["nvlink2"] else { throw spec.error("nvlink2", "missing") }
        let o = try n.object(allowed: ["tgt", "ramWindow", "ramSize"])
        guard let t = o["tgt"] else { throw n.error("missing required key 'tgt'") }
        guard let w = o["ramWindow"] else { throw n.error("missing required key 'ramWindow'") }
        let tgt = try t.unsigned()
        let window = try w.unsigned(max: 1 << 40)
        guard window > 0, window % 4096 == 0 else { throw w.error("must be a non-zero multiple of 4 KiB") }
        let ram = try o["ramSize"]?.unsigned(max: window) ?? window
        guard ram > 0, ram % 4096 == 0 else { throw o["ramSize"]!.error("must be a non-zero multiple of 4 KiB") }

        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)
        let placeholder = ReadOnlyBytes([])
        let index = device.addDeviceSpecificRegion(size: window, type: Self.regionType, subtype: Self.ramSubtype,
                                                   readable: true, writable: true,
                                                   extraCapabilities: [.nvlink2SSATGT(tgt: tgt)], backing: .handler(placeholder))
        _ = try WindowedMemory.install(on: device, region: index, name: "\(spec.configuration.name)-gpu-ram", length: ram,
                                       spec: spec, field: "nvlink2.ramSize")
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }
}

/// NPU2 bridge (`nvlink2-npu`): region type 0x80001014 subtype 1 (NVLINK2_ATSD):
/// `atsdSize` bytes (64 KiB, the POWER page) of mmap-able shared memory, or 0 when
/// the PHB has no ATSD register (the region is still there, for its capabilities).
/// Capabilities NVLINK2_SSATGT (the same `tgt` as the GPU: that is how userspace
/// pairs them) then NVLINK2_LNKSPD (`linkSpeed`, `ibm,nvlink-speed`).
public struct NVLink2NPUDriver: VariantDriver {
    public init() {}
    public var name: String { "nvlink2-npu" }
    public var summary: String { "POWER9 NPU2 NVLink bridge: ATSD region (mmap, SSATGT, LNKSPD)" }
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x1014, device: 0x04EA)] }
    public var sectionKeys: Set<String> { ["nvlink2"] }

    public static let regionType: UInt32 = 0x8000_0000 | 0x1014
    public static let atsdSubtype: UInt32 = 1

    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        guard let n = spec.sections["nvlink2"] else {
            return .decline("no 'nvlink2' section: the platform does not describe a GPU behind this NPU (ibm,nvlink, ibm,device-tgt-addr)")
        }
        let o = n.members
        guard o["tgt"] != nil else { return .decline("nvlink2.tgt is missing: no ibm,device-tgt-addr for the link") }
        guard o["linkSpeed"] != nil else { return .decline("nvlink2.linkSpeed is missing: no ibm,nvlink-speed (the link would not work)") }
        return .accept
    }

    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        guard let n = spec.sections["nvlink2"] else { throw spec.error("nvlink2", "missing") }
        let o = try n.object(allowed: ["tgt", "linkSpeed", "atsdSize"])
        guard let t = o["tgt"] else { throw n.error("missing required key 'tgt'") }
        guard let l = o["linkSpeed"] else { throw n.error("missing required key 'linkSpeed'") }
        let tgt = try t.unsigned()
        let speed = UInt32(try l.unsigned(max: 0xFFFF_FFFF))
        let atsd = try o["atsdSize"]?.unsigned(max: 1 << 30) ?? 0x10000
        guard atsd % 4096 == 0 else { throw o["atsdSize"]!.error("must be a multiple of 4 KiB (0 = no ATSD)") }

        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)
        let caps: [RegionCapability] = [.nvlink2SSATGT(tgt: tgt), .nvlink2LinkSpeed(speed)]
        if atsd == 0 {
            device.addDeviceSpecificRegion(size: 0, type: Self.regionType, subtype: Self.atsdSubtype, readable: true,
                                           writable: true, extraCapabilities: caps, backing: .handler(ReadOnlyBytes([])))
        } else {
            let mem: SharedMemory
            do { mem = try SharedMemory(name: "\(spec.configuration.name)-atsd", size: Int(atsd)) } catch {
                throw (o["atsdSize"] ?? n).error("cannot allocate \(atsd) bytes of shared memory: \(error)")
            }
            device.addDeviceSpecificRegion(size: atsd, type: Self.regionType, subtype: Self.atsdSubtype, readable: true,
                                           writable: true, mmappable: true, extraCapabilities: caps, backing: .memory(mem))
        }
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }
}
