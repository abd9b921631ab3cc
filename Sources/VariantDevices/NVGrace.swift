import DeviceSpecs
import PCICore
import VFIOUserProtocol

/// Grace Hopper / Grace Blackwell GPU (nvgrace-gpu, reference §5, §9.4): the
/// coherent device memory, which the host reaches over C2C, appears as fake
/// 64-bit prefetchable BARs.
///
/// - The probe needs the ACPI properties (`nvgrace.memSize`, `nvgrace.memBase`);
///   without them, or with size 0 (C2C link down), it declines and the device is
///   plain (the kernel binds with vfio-pci-core ops). It also declines when the
///   readiness registers (BAR0+0x1498, BAR0+0x200BC) are declared with a value
///   other than 0xFF: the kernel's probe times out on such a device.
/// - MIG hardware bug: present unless a DVSEC (vendor 0x10DE, ID 3) has bit 0 set
///   in its u16 at +0xA. With the bug, the last 1 GiB (plus what rounding usemem
///   down to 512 MiB leaves) is resmem at BAR2/3 (region 2); usemem is BAR4/5
///   (region 4). Each BAR is the power of two at or above its memory.
/// - The core emulates the BARs' sizing: the variant adds them to the
///   configuration before the device is built. Their regions are then served by
///   the variant: real memory below `memlength` (mmap-able, one sparse area), 0xFF
///   and dropped writes above; the Command register's Memory bit is not checked.
/// - Reset clears the emulated BAR registers (0x18-0x27).
public struct NVGraceDriver: VariantDriver {
    /// The nvgrace driver (it has no state).
    public init() {}
    /// "nvgrace".
    public var name: String { "nvgrace" }
    /// One line for `vfu variants`.
    public var summary: String { "NVIDIA Grace Hopper/Blackwell GPU: device memory as emulated BARs (usemem BAR4, resmem BAR2)" }
    /// The kernel's nvgrace-gpu ID table.
    public var idTable: [PCIMatch] { [0x2342, 0x2345, 0x2348, 0x2941, 0x31C2].map { PCIMatch(vendor: 0x10DE, device: $0) } }
    /// Reads the `nvgrace` section.
    public var sectionKeys: Set<String> { ["nvgrace"] }

    /// Resmem set aside with the MIG hardware bug: the last 1 GiB.
    public static let resmemSize: UInt64 = 1 << 30
    /// `MEMBLK_SIZE`: usemem is a multiple of it (an ABI with the GPU firmware).
    public static let memblockSize: UInt64 = 512 << 20
    /// BAR0 registers that read 0xFF once the GPU is ready.
    public static let readinessRegisters: [UInt64] = [0x1498, 0x200BC]
    /// The BAR pair that shows usemem.
    public static let usememBAR = 4
    /// The BAR pair that shows resmem.
    public static let resmemBAR = 2

    /// How device memory splits into the fake BARs.
    public struct Layout: Sendable, Equatable {
        /// Whether the MIG hardware bug applies (resmem exists).
        public var hasMigHardwareBug: Bool
        /// Bytes of usemem (a multiple of `memblockSize` with the bug).
        public var usememLength: UInt64
        /// Bytes of resmem (0 without the bug).
        public var resmemLength: UInt64
        /// The usemem BAR's size: the power of two at or above its memory.
        public var usememBARSize: UInt64 { Self.roundUpPowerOfTwo(usememLength) }
        /// The resmem BAR's size (0 without resmem).
        public var resmemBARSize: UInt64 { resmemLength == 0 ? 0 : Self.roundUpPowerOfTwo(resmemLength) }

        /// The split of `memSize` bytes, as the kernel computes it.
        public init(memSize: UInt64, hasMigHardwareBug: Bool) {
            self.hasMigHardwareBug = hasMigHardwareBug
            if hasMigHardwareBug, memSize > NVGraceDriver.resmemSize {
                usememLength = (memSize - NVGraceDriver.resmemSize) / NVGraceDriver.memblockSize * NVGraceDriver.memblockSize
            } else {
                usememLength = hasMigHardwareBug ? 0 : memSize
            }
            resmemLength = hasMigHardwareBug ? memSize - usememLength : 0
        }

        static func roundUpPowerOfTwo(_ v: UInt64) -> UInt64 { v <= 1 ? 1 : 1 << (64 - (v - 1).leadingZeroBitCount) }
    }

    /// has_mig_hw_bug: no DVSEC 0x10DE/3 with MIG_SUPPORTED_WITH_CACHED_RESMEM (bit 0 at +0xA).
    public static func hasMigHardwareBug(_ c: PCIDeviceConfiguration) -> Bool {
        for cap in c.extendedCapabilities where cap.id == PCIExtendedCapability.dvsecID && cap.body.count >= 8 {
            let h1 = cap.body.le32(at: 0)
            if h1 & 0xFFFF == 0x10DE, cap.body.le16(at: 4) == 3 { return cap.body.le16(at: 6) & 1 == 0 }
        }
        return true
    }

    /// Declines without the ACPI properties, with C2C down, or before the GPU is ready.
    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        guard let n = spec.sections["nvgrace"] else {
            return .decline("no 'nvgrace' section: the ACPI properties nvidia,gpu-mem-base-pa/-size are absent")
        }
        let o = n.members
        guard let s = o["memSize"] else { return .decline("nvgrace.memSize is missing (ACPI nvidia,gpu-mem-size)") }
        guard o["memBase"] != nil else { return .decline("nvgrace.memBase is missing (ACPI nvidia,gpu-mem-base-pa)") }
        if let v = try? s.unsigned(), v == 0 { return .decline("nvgrace.memSize is 0: the C2C link is down") }
        for r in spec.configuration.registers where r.bar == 0 && Self.readinessRegisters.contains(r.offset) && r.value & 0xFF != 0xFF {
            return .decline("the device is not ready: BAR0+\(hex(r.offset)) reads \(hex(r.value)), not 0xFF")
        }
        return .accept
    }

    /// The core device with the fake BARs served from device memory.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        guard let n = spec.sections["nvgrace"] else { throw spec.error("nvgrace", "missing") }
        let o = try n.object(allowed: ["memBase", "memSize"])
        guard let sNode = o["memSize"] else { throw n.error("missing required key 'memSize'") }
        guard let bNode = o["memBase"] else { throw n.error("missing required key 'memBase'") }
        let memSize = try sNode.unsigned(max: 1 << 40)
        _ = try bNode.unsigned()  // the host physical base: informational for an emulated device
        var c = spec.configuration
        let layout = Layout(memSize: memSize, hasMigHardwareBug: Self.hasMigHardwareBug(c))
        guard layout.usememLength > 0 else {
            throw sNode.error("\(hex(memSize)) bytes leave no usemem once 1 GiB of resmem is set aside and the rest rounded down to 512 MiB")
        }
        guard let bar0 = c.bars.first(where: { $0.index == 0 }), bar0.backing == .registers, bar0.kind != .io, bar0.size > 0x200BC + 4 else {
            throw spec.error("bars", "nvgrace needs BAR0 as register-backed memory of at least 256 KiB (readiness registers at 0x1498 and 0x200BC)")
        }
        var wanted = [(Self.usememBAR, layout.usememBARSize)]
        if layout.resmemLength > 0 { wanted.append((Self.resmemBAR, layout.resmemBARSize)) }
        for (bar, size) in wanted {
            if let clash = c.bars.first(where: { [$0.index, $0.index + ($0.kind == .memory64 ? 1 : 0)].contains(where: { $0 == bar || $0 == bar + 1 }) }) {
                throw spec.error("bars", "BAR\(clash.index) is in the way: nvgrace presents device memory as BAR\(bar)/\(bar + 1)")
            }
            c.bars.append(BARDescriptor(index: bar, size: size, kind: .memory64, prefetchable: true, backing: .registers))
        }
        for off in Self.readinessRegisters where !c.registers.contains(where: { $0.bar == 0 && $0.offset == off }) {
            c.registers.append(RegisterDefinition(bar: 0, offset: off, width: 4, value: 0xFF, writeMask: 0))
        }

        let device = try spec.buildCoreDevice(c)
        try GenericDriver.attachDoorbell(spec, to: device)
        let name = spec.configuration.name
        _ = try WindowedMemory.install(on: device, region: UInt32(Self.usememBAR), name: "\(name)-usemem",
                                       length: layout.usememLength, spec: spec, field: "nvgrace.memSize")
        if layout.resmemLength > 0 {
            _ = try WindowedMemory.install(on: device, region: UInt32(Self.resmemBAR), name: "\(name)-resmem",
                                           length: layout.resmemLength, spec: spec, field: "nvgrace.memSize")
        }
        let fake = wanted.map(\.0)
        for bar in fake { device.updateRegion(UInt32(bar)) { $0.decodeGate = .none } }
        // The kernel zeroes bar_val on VFIO_DEVICE_RESET; the core's config reset
        // already restores the BAR registers, this states the variant's rule.
        device.onReset { [unowned device] _ in
            for bar in fake { device.setConfigBits(dword: 0x10 + 4 * bar, 0); device.setConfigBits(dword: 0x14 + 4 * bar, 0) }
        }
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }
}
