import ArgumentParser
import VFIOUserClient
import VFIOUserProtocol

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show any vfio-user server's device, lspci-style.",
        discussion: """
            --dump prints config space in `lspci -xxxx` form; save it and run \
            `lspci -F FILE -vvv` to have pciutils decode it.
            """)

    @Option(help: "The server's Unix socket.")
    var socket: String

    @Flag(help: "Print config space as a hex dump that `lspci -F` reads.")
    var dump = false

    func run() throws {
        let client: VFIOUserClient
        do { client = try VFIOUserClient(path: socket) } catch {
            printError("vfu: error: cannot talk to \(socket): \(error)")
            throw ExitCode(1)
        }
        defer { client.close() }
        let info = try client.deviceInfo()
        let configInfo = try client.regionInfo(RegionIndex.config.rawValue).info
        let cfgSize = Int(min(configInfo.size, 4096))
        var cfg: [UInt8] = []
        while cfg.count < cfgSize {
            cfg += try client.readConfig(offset: UInt64(cfg.count), count: min(256, cfgSize - cfg.count))
        }
        if dump {
            print(ConfigSpaceReport.dump(cfg))
            return
        }
        let caps = client.serverCapabilities
        print("vfio-user server at \(socket): protocol \(client.serverVersion.major).\(client.serverVersion.minor), "
              + "max_data_xfer_size \(caps.effectiveMaxDataXferSize), max_msg_fds \(caps.effectiveMaxMsgFDs)")
        print("device flags: \(flagNames(info.flags)), \(info.numRegions) regions, \(info.numIRQs) irq indices")
        var regions: [(UInt32, RegionInfo)] = []
        for i in 0..<info.numRegions {
            let (r, fd) = try client.regionInfo(i)
            fd?.close()
            regions.append((i, r))
        }
        print(ConfigSpaceReport.describe(cfg, regions: regions))
        for i in 0..<min(info.numIRQs, 5) {
            let irq = try client.irqInfo(i)
            guard irq.count > 0 else { continue }
            print("\tIRQ \(IRQIndex(i)): count=\(irq.count) flags=\(irqFlagNames(irq.flags))")
        }
    }

    func flagNames(_ f: DeviceInfoFlags) -> String {
        var s: [String] = []
        if f.contains(.pci) { s.append("PCI") }
        if f.contains(.reset) { s.append("RESET") }
        if f.contains(.caps) { s.append("CAPS") }
        return s.joined(separator: "|")
    }

    func irqFlagNames(_ f: IRQInfoFlags) -> String {
        var s: [String] = []
        if f.contains(.eventfd) { s.append("EVENTFD") }
        if f.contains(.maskable) { s.append("MASKABLE") }
        if f.contains(.automasked) { s.append("AUTOMASKED") }
        if f.contains(.noresize) { s.append("NORESIZE") }
        return s.joined(separator: "|")
    }
}
