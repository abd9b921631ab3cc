import ArgumentParser
import DeviceSpecs
import Glibc
import Logging
import PCICore
import VariantDevices
import VFIOUserServer
import VFIOUserTransport

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the device a spec describes on a Unix socket.",
        discussion: """
            The spec is validated and the device built before anything listens: a bad \
            spec exits with status 2 and a message naming the file, the field and the reason.

            SIGINT, SIGTERM, SIGHUP and SIGQUIT stop the server: live connections are \
            closed, threads joined, the socket removed, and the exit status is 0.

            --fd N serves an already listening Unix stream socket (socket activation); \
            anything else exits with status 2.
            """)

    @Argument(help: "Device spec (JSON), e.g. specs/default.json.")
    var spec: String

    @Option(help: "Unix socket path to listen on.")
    var socket: String?

    @Option(help: "An already listening socket fd to serve (instead of --socket).")
    var fd: Int32?

    @Option(help: "Force a variant (like driver_override); `vfu variants` lists them.")
    var variant: String?

    @Option(help: "Log level.")
    var logLevel: LogLevelOption = .info

    @Flag(help: "Log every message, decoded, in both directions.")
    var trace = false

    @Option(help: "Largest data transfer accepted per message (bytes).")
    var maxDataXferSize: Int = 1 << 20

    func validate() throws {
        guard (socket == nil) != (fd == nil) else { throw ValidationError("give exactly one of --socket and --fd") }
        guard (4096...(64 << 20)).contains(maxDataXferSize) else {
            throw ValidationError("--max-data-xfer-size must be 4096...67108864 (QEMU refuses more than 64 MiB)")
        }
    }

    func run() throws {
        // Block the stop signals before any thread exists (a device model may start
        // one while it is built); one thread waits for them with sigwait.
        var set = stopSignalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        let logger = makeLogger(level: trace && logLevel.level > .info ? .info : logLevel)
        if let fd, let why = UnixListener.problem(withListeningFD: fd) {
            printError("vfu: error: --fd \(fd): \(why)")
            throw ExitCode(2)
        }
        let registry = VariantRegistry.standard
        let device: PCIDevice
        do {
            let spec = try registry.loadSpec(path: spec)
            let binding = try registry.bind(spec, override: variant)
            for s in binding.skipped { logger.info("variant \(s.name) not bound: \(s.reason)") }
            logger.info("variant \(binding.driver.name) bound: \(binding.reason)")
            device = try binding.driver.build(spec)
        } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(2)
        }
        let listener: UnixListener
        do {
            listener = try socket.map { try UnixListener(path: $0) } ?? UnixListener(listeningFD: fd!)
        } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(1)
        }
        var options = ServerOptions()
        options.trace = trace
        options.maxDataXferSize = maxDataXferSize
        let server = VFIOUserServer(device: device, options: options, logger: logger)
        let signalSet = set
        spawnThread(name: "vfu-signals") {
            var s = signalSet
            var sig: Int32 = 0
            sigwait(&s, &sig)
            logger.info("signal \(sig): stopping")
            server.stop()
        }
        logger.info("serving \(device.configuration.name) on \(socket ?? "fd \(fd!)")")
        server.serve(on: listener)
        let signalled = server.isStopped
        // Reached after stop() (a signal) or when the listener became unusable: close
        // every connection, join the threads, end the device's work, remove the socket.
        server.stop()
        device.stopWork()
        listener.close()
        logger.info("stopped")
        if !signalled { throw ExitCode(1) }
    }
}
