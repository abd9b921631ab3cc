import ArgumentParser
import DeviceSpecs
@_spi(Server) import PCICore
import VariantDevices
import VFIOUserControl

struct CheckSpecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-spec",
        abstract: "Validate spec files and show which variant each binds to.",
        discussion: """
            With --effective, prints for one spec the configuration the device really has \
            once its variant has shaped it (ids, BARs, interrupts), as JSON in the spec \
            format: the end-to-end checker compares the guest's view against it.
            """)

    @Argument(help: "Spec files.")
    var specs: [String]

    @Flag(help: "Print the effective configuration of the (single) spec as JSON.")
    var effective = false

    func run() throws {
        let registry = VariantRegistry.standard
        var failed = false
        for path in specs {
            do {
                let spec = try registry.loadSpec(path: path)
                let binding = try registry.bind(spec)
                let device = try binding.driver.build(spec)
                // The spec's fault scenarios (docs/control.md) are checked against the device.
                _ = try FaultScenario.parse(spec, limits: ControlledDevice.limits(of: device))
                if effective {
                    print(Self.effectiveJSON(device.configuration, variant: binding.driver.name))
                } else {
                    print("\(path): ok (\(spec.name), variant \(binding.driver.name))")
                }
            } catch {
                printError("\(error)")
                failed = true
            }
        }
        if failed { throw ExitCode(2) }
    }

    static func hex(_ v: some BinaryInteger) -> String { "\"0x" + String(v, radix: 16) + "\"" }

    static func effectiveJSON(_ c: PCIDeviceConfiguration, variant: String) -> String {
        let id = c.identity
        var o: [String] = []
        o.append("\"name\":\"\(c.name)\",\"variant\":\"\(variant)\"")
        o.append("\"ids\":{\"vendor\":\(hex(id.vendor)),\"device\":\(hex(id.device)),\"subsystemVendor\":\(hex(id.subsystemVendor)),"
                 + "\"subsystem\":\(hex(id.subsystem)),\"revision\":\(hex(id.revision)),\"classCode\":\(hex(id.classCode))}")
        o.append("\"express\":\(c.express)")
        let bars = c.bars.map { b -> String in
            let kind = b.kind == .io ? "io" : "memory"
            let bits = b.kind == .memory64 ? 64 : 32
            var backing = "registers"
            if case .ram = b.backing { backing = "ram" }
            return "{\"index\":\(b.index),\"size\":\(hex(b.size)),\"kind\":\"\(kind)\",\"bits\":\(bits),"
                + "\"prefetchable\":\(b.prefetchable),\"backing\":\"\(backing)\"}"
        }
        o.append("\"bars\":[\(bars.joined(separator: ","))]")
        var irq: [String] = ["\"intx\":\"\(c.interruptPin == 0 ? "none" : String(UnicodeScalar(64 + c.interruptPin)))\""]
        if let m = c.msi {
            irq.append("\"msi\":{\"vectors\":\(m.vectors),\"address64\":\(m.address64),\"perVectorMask\":\(m.perVectorMask)}")
        }
        if let x = c.msix {
            irq.append("\"msix\":{\"vectors\":\(x.vectors),\"bar\":\(x.tableBAR),\"tableOffset\":\(hex(x.tableOffset)),"
                       + "\"pbaBar\":\(x.pbaBAR),\"pbaOffset\":\(hex(x.pbaOffset))}")
        }
        irq.append("\"err\":\(c.errInterrupt),\"req\":\(c.reqInterrupt)")
        o.append("\"interrupts\":{\(irq.joined(separator: ","))}")
        return "{" + o.joined(separator: ",") + "}"
    }
}
