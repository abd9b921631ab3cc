import DeviceSpecs
import PCICore

/// The plain core device: everything the spec's core sections describe, plus the
/// built-in doorbell model when the spec places one.
public struct GenericDriver: VariantDriver {
    /// The generic driver (it has no state).
    public init() {}
    /// "generic".
    public var name: String { "generic" }
    /// One line for `vfu variants`.
    public var summary: String { "the core PCI function described by the spec (registers, RAM BARs, doorbell model)" }
    /// Matches every device: the fallback.
    public var idTable: [PCIMatch] { [PCIMatch()] }
    /// Device-info capabilities (zPCI, AtomicOps) are core vfio-pci behaviour: any spec may ask.
    public var sectionKeys: Set<String> { DeviceInfoCaps.sectionKeys }
    /// Accepts every spec.
    public func probe(_ spec: DeviceSpec) -> ProbeResult { .accept }

    /// The core device, its doorbell model and device-info capabilities.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let device = try spec.buildCoreDevice()
        try Self.attachDoorbell(spec, to: device)
        try DeviceInfoCaps.apply(spec, to: device)
        return device
    }

    /// Installs the doorbell model if the spec asks for one (used by variants too).
    public static func attachDoorbell(_ spec: DeviceSpec, to device: PCIDevice) throws(SpecError) {
        guard let p = spec.doorbell else { return }
        let model = DoorbellDevice(device: device)
        do {
            try device.mapRegisters(bar: p.bar, range: p.offset..<(p.offset + DoorbellDevice.size), handler: model)
        } catch {
            throw spec.error("doorbell", "its registers overlap another register range in BAR\(p.bar) (\(error))")
        }
    }
}
