import ArgumentParser
import Glibc
import Logging
import PCICore
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

/// The many-devices host of scripts/bench.sh: one process serving `count` devices
/// built from one spec, device i on PREFIX<i>.sock, so the benchmark can measure N
/// clients on N devices in one process and what an idle device costs.
struct BenchHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-host", shouldDisplay: false)

    @Argument var spec: String
    @Option var count = 1
    @Option(name: .customLong("socket-prefix")) var socketPrefix: String

    func run() throws {
        var set = stopSignalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        var logger = Logger(label: "vfu")
        logger.logLevel = .error
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: spec)
        var servers: [(VFIOUserServer, UnixListener, PCIDevice)] = []
        for i in 0..<max(count, 1) {
            let device = try registry.bind(spec, override: nil).driver.build(spec)
            let listener = try UnixListener(path: "\(socketPrefix)\(i).sock")
            servers.append((VFIOUserServer(device: device, options: ServerOptions(), logger: logger), listener, device))
        }
        for (server, listener, _) in servers.dropFirst() {
            spawnThread(name: "vfu-accept") { server.serve(on: listener) }
        }
        let all = servers
        let signalSet = set
        spawnThread(name: "vfu-signals") {
            var s = signalSet
            var sig: Int32 = 0
            sigwait(&s, &sig)
            for (server, _, _) in all { server.stop() }
        }
        servers[0].0.serve(on: servers[0].1)
        for (server, listener, device) in servers {
            server.stop()
            device.stopWork()
            listener.close()
        }
    }
}
