import DeviceSpecs
import PCICore
import VFIOUserProtocol


/// `migratable-vf`: an mlx5-style VF whose state keeps changing while it runs, and
/// which migrates (VFIO migration v2 with PRE_COPY and P2P; docs/migration.md).
public struct MigratableVFDriver: VariantDriver {
    /// The migratable VF driver (it has no state).
    public init() {}
    /// "migratable-vf".
    public var name: String { "migratable-vf" }
    /// One line for `vfu variants`.
    public var summary: String {
        "mlx5-style migratable VF: a descriptor ring processed by DMA, counters, a RAM BAR; migration v2 with PRE_COPY, P2P and dirty logging"
    }
    /// A ConnectX-style VF ID (example only).
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x15B3, device: 0x101E)] }
    /// Reads the `migration` section.
    public var sectionKeys: Set<String> { ["migration"] }

    /// The smallest spec for this variant: a 1 MiB register BAR 0, a RAM BAR 2 of
    /// `ramKiB`, 4 MSI-X vectors. `vfu migrate --bench` and the tests build from it.
    public static func minimalSpec(ramKiB: Int, vendor: String = "0x15b3", device: String = "0x101e",
                                   preCopy: Bool = true, p2p: Bool = true, batch: Int = 32) -> String {
        """
        {"name": "migratable-vf", "variant": "migratable-vf",
         "ids": {"vendor": "\(vendor)", "device": "\(device)", "subsystemVendor": "0x15b3", "subsystem": "0x0069", "classCode": "0x020000"},
         "express": true,
         "bars": [{"index": 0, "size": "1MiB", "bits": 64, "backing": "registers"},
                  {"index": 2, "size": "\(ramKiB)KiB", "bits": 64, "prefetchable": true, "backing": "ram"}],
         "interrupts": {"msix": {"vectors": 4, "bar": 0, "tableOffset": "0x2000", "pbaOffset": "0x3000"}},
         "migration": {"ramBar": 2, "preCopy": \(preCopy), "p2p": \(p2p), "batch": \(batch)}}
        """
    }

    /// Declines a spec whose `migration` section does not parse or fit the BARs.
    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        do { _ = try MigratableVFOptions.parse(spec) } catch { return .decline("\(error.field): \(error.reason)") }
        return .accept
    }

    /// The core device, the model and its migration controller.
    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let options = try MigratableVFOptions.parse(spec)
        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)
        _ = try MigratableVF.attach(to: device, options: options, kind: name)
        return device
    }
}
