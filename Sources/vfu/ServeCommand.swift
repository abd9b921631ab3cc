import ArgumentParser
import DeviceSpecs
import Glibc
import Logging
@_spi(Server) import PCICore
import VariantDevices
import VFIOUserControl
import VFIOUserServer
import VFIOUserTransport

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the devices specs describe, each on its own Unix socket.",
        discussion: """
            Every spec is validated and every device built before anything listens: a bad \
            spec exits with status 2 and a message naming the file, the field and the reason.

            Several specs make several devices in one process, isolated from one another \
            (each has its own socket, owner, DMA table and threads). Give one --socket or \
            --fd per spec, in the same order, or --socket-dir DIR for DIR/NAME.sock (NAME is \
            the spec file's name without .json).

            Socket activation: started by systemd with LISTEN_FDS (and LISTEN_PID set to \
            this process) and no --socket, --fd or --socket-dir, the passed sockets are \
            served, matched to the specs by LISTEN_FDNAMES (FileDescriptorName= in the \
            .socket unit, the spec's NAME) or else in order. See docs/qemu.md.

            SIGINT, SIGTERM, SIGHUP and SIGQUIT stop the server: live connections are \
            closed, threads joined, the sockets removed, and the exit status is 0.

            --fd N serves an already listening Unix stream socket; anything else exits \
            with status 2.

            --control PATH opens a second socket (mode 0600, owner only) for `vfu ctl`: \
            peek and poke registers, raise interrupts, inject faults, watch every access \
            (docs/control.md), the devices addressed by their spec's name. Each spec's \
            `faults` section is armed at start.
            """)

    @Argument(help: "Device specs (JSON), e.g. specs/default.json.")
    var specs: [String]

    @Option(help: "Unix socket path to listen on (one per spec, in order).")
    var socket: [String] = []

    @Option(help: "An already listening socket fd to serve (one per spec, instead of --socket).")
    var fd: [Int32] = []

    @Option(help: "Listen on DIR/NAME.sock for each spec (NAME: the spec file's name without .json).")
    var socketDir: String?

    @Option(help: "Force a variant (like driver_override), once per spec; `vfu variants` lists them.")
    var variant: [String] = []

    @Option(help: "Log level.")
    var logLevel: LogLevelOption = .info

    @Flag(help: "Log every message, decoded, in both directions.")
    var trace = false

    @Option(help: "Largest data transfer accepted per message (bytes).")
    var maxDataXferSize: Int = 1 << 20

    @OptionGroup var recording: ServeRecordingOptions

    @Option(help: "Also listen on this Unix socket for control requests (vfu ctl; docs/control.md).")
    var control: String?

    func validate() throws {
        guard !specs.isEmpty else { throw ValidationError("give at least one spec") }
        let ways = [!socket.isEmpty, !fd.isEmpty, socketDir != nil].filter { $0 }.count
        guard ways <= 1 else { throw ValidationError("give only one of --socket, --fd and --socket-dir") }
        if ways == 0 && SocketActivation.passedFDCount == nil {
            throw ValidationError("give --socket, --fd or --socket-dir (or start vfu serve by socket activation)")
        }
        guard socket.isEmpty || socket.count == specs.count else {
            throw ValidationError("\(specs.count) spec(s) but \(socket.count) --socket: give one per spec, in order")
        }
        guard fd.isEmpty || fd.count == specs.count else {
            throw ValidationError("\(specs.count) spec(s) but \(fd.count) --fd: give one per spec, in order")
        }
        guard variant.isEmpty || variant.count == specs.count else {
            throw ValidationError("\(specs.count) spec(s) but \(variant.count) --variant: give one per spec, or none")
        }
        let names = specs.map(Self.socketName)
        if socketDir != nil || ways == 0, let dup = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 }) {
            throw ValidationError("two specs are named '\(dup.key)': their sockets would collide")
        }
        guard Set(socket).count == socket.count else { throw ValidationError("the same --socket twice") }
        guard (4096...(64 << 20)).contains(maxDataXferSize) else {
            throw ValidationError("--max-data-xfer-size must be 4096...67108864 (QEMU refuses more than 64 MiB)")
        }
    }

    /// A spec file's name without its folder and `.json`: its socket's name.
    static func socketName(_ specPath: String) -> String {
        var name = String(specPath.split(separator: "/").last ?? Substring(specPath))
        if name.hasSuffix(".json") { name.removeLast(5) }
        return name
    }

    func run() throws {
        // Block the stop signals before any thread exists (a device model may start
        // one while it is built); one thread waits for them with sigwait.
        var set = stopSignalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        let logger = makeLogger(level: trace && logLevel.level > .info ? .info : logLevel)

        let endpoints: [Endpoint]
        do { endpoints = try resolveEndpoints() } catch {
            printError("vfu: error: \(error.message)")
            throw ExitCode(2)
        }
        let built = try buildDevices(logger: logger)
        let devices = built.map(\.device)
        // The control plane, attached before anything listens (docs/control.md).
        var controlled: [ControlledDevice] = []
        if control != nil {
            let names = devices.map(\.configuration.name)
            if let dup = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 }) {
                printError("vfu: error: two devices are named '\(dup.key)': --control addresses devices by their spec's name")
                throw ExitCode(2)
            }
            for (device, scenario) in built {
                let c = ControlledDevice(name: device.configuration.name, device: device)
                do { try c.arm(scenario) } catch {
                    printError("vfu: error: \(device.configuration.name): \(error)")
                    throw ExitCode(2)
                }
                controlled.append(c)
            }
        } else if built.contains(where: { !$0.scenario.faults.isEmpty }) {
            logger.warning("a spec's faults section is armed only with --control")
        }

        // Listen on every socket, or on none.
        var listeners: [UnixListener] = []
        for e in endpoints {
            do {
                switch e {
                case .path(let p): listeners.append(try UnixListener(path: p))
                case .fd(let n, _): listeners.append(UnixListener(listeningFD: n))
                }
            } catch {
                printError("vfu: error: \(e): \(error)")
                for l in listeners { l.close() }
                throw ExitCode(1)
            }
        }
        var options = ServerOptions()
        options.trace = trace
        options.maxDataXferSize = maxDataXferSize
        let recorder: RecordingObserver.Shared?
        do { recorder = try recording.shared(logger: logger) } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(1)
        }
        let servers = zip(devices, specs).enumerated().map { i, pair in
            var l = logger
            if specs.count > 1 { l[metadataKey: "dev"] = "\(Self.socketName(pair.1))" }
            var o = options
            o.hooks = controlled.isEmpty ? nil : controlled[i]
            o.observer = recorder?.observer(device: i)
            return VFIOUserServer(device: pair.0, options: o, logger: l)
        }
        var controlServer: ControlServer? = nil
        if let control {
            for (c, server) in zip(controlled, servers) { c.attach(server: server) }
            do { controlServer = try ControlServer(path: control, devices: controlled, logger: logger) } catch {
                printError("vfu: error: --control \(control): \(error)")
                for l in listeners { l.close() }
                throw ExitCode(1)
            }
            controlServer?.start()
            logger.info("control socket on \(control)")
        }
        let signalSet = set
        spawnThread(name: "vfu-signals") {
            var s = signalSet
            var sig: Int32 = 0
            sigwait(&s, &sig)
            logger.info("signal \(sig): stopping")
            for server in servers { server.stop() }
        }
        // Every device but the first is served from its own accept thread; the first on this one.
        for (i, e) in endpoints.enumerated() {
            logger.info("serving \(devices[i].configuration.name) on \(e)")
            if i > 0 { servers[i].start(on: listeners[i]) }
        }
        servers[0].serve(on: listeners[0])
        let signalled = servers[0].isStopped
        // Reached after stop() (a signal) or when the first listener became unusable:
        // close every connection, join the threads, end the devices' work, remove the sockets.
        for server in servers { server.stop() }
        controlServer?.stop()
        for d in devices { d.work.hold(false); d.stopWork() }
        for l in listeners { l.close() }
        logger.info("stopped")
        if !signalled { throw ExitCode(1) }
    }

    /// Validates every spec and builds every device before anything listens.
    /// Each with its spec's fault scenarios, checked against the built device (so a bad
    /// one exits 2 naming file, field and reason like any other spec error).
    private func buildDevices(logger: Logger) throws -> [(device: PCIDevice, scenario: FaultScenario)] {
        let registry = VariantRegistry.standard
        var devices: [(device: PCIDevice, scenario: FaultScenario)] = []
        for (i, path) in specs.enumerated() {
            do {
                let spec = try registry.loadSpec(path: path)
                let binding = try registry.bind(spec, override: variant.isEmpty ? nil : variant[i])
                for s in binding.skipped { logger.debug("variant \(s.name) not bound to \(path): \(s.reason)") }
                logger.info("\(path): variant \(binding.driver.name) bound (\(binding.reason))")
                let device = try binding.driver.build(spec)
                devices.append((device, try FaultScenario.parse(spec, limits: ControlledDevice.limits(of: device))))
            } catch {
                printError("vfu: error: \(error)")
                throw ExitCode(2)
            }
        }
        return devices
    }

    /// Where each spec's device listens, in spec order.
    private func resolveEndpoints() throws(UsageError) -> [Endpoint] {
        if !socket.isEmpty { return socket.map { .path($0) } }
        if let dir = socketDir { return specs.map { .path(dir + "/" + Self.socketName($0) + ".sock") } }
        let passed: [(fd: Int32, name: String?)]
        if !fd.isEmpty {
            passed = fd.map { ($0, nil) }
        } else {
            passed = try SocketActivation.take(names: specs.map(Self.socketName))
        }
        for p in passed {
            if let why = UnixListener.problem(withListeningFD: p.fd) { throw UsageError("--fd \(p.fd): \(why)") }
        }
        return passed.map { .fd($0.fd, $0.name) }
    }

    enum Endpoint: CustomStringConvertible {
        case path(String)
        case fd(Int32, String?)
        var description: String {
            switch self {
            case .path(let p): p
            case .fd(let n, let name): name.map { "fd \(n) (\($0))" } ?? "fd \(n)"
            }
        }
    }
}

struct UsageError: Error {
    let message: String
    init(_ m: String) { message = m }
}

/// systemd's socket activation, as `sd_listen_fds(1)` defines it: LISTEN_PID names this
/// process, LISTEN_FDS counts the fds passed from 3 up, LISTEN_FDNAMES (optional) names
/// them, colon-separated. The variables are unset once taken, as sd_listen_fds(1) does,
/// so children do not inherit them.
enum SocketActivation {
    static let firstFD: Int32 = 3

    /// How many fds were passed to this very process, or nil when none were.
    static var passedFDCount: Int? {
        guard let pid = env("LISTEN_PID"), Int32(pid) == getpid(), let n = env("LISTEN_FDS").flatMap(Int.init), n > 0 else {
            return nil
        }
        return n
    }

    /// The passed fds matched to `names` (spec order): by LISTEN_FDNAMES when every spec's
    /// name is among them, else in order. The counts must agree.
    static func take(names: [String]) throws(UsageError) -> [(fd: Int32, name: String?)] {
        guard let n = passedFDCount else {
            throw UsageError("no sockets were passed (LISTEN_FDS/LISTEN_PID); give --socket, --fd or --socket-dir")
        }
        let fdNames = env("LISTEN_FDNAMES").map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
        defer { for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(v) } }
        guard n == names.count else {
            throw UsageError("socket activation passed \(n) socket(s) for \(names.count) spec(s): give one socket per spec")
        }
        let fds = (0..<Int32(n)).map { firstFD + $0 }
        for f in fds { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        if let fdNames, fdNames.count == n, Set(names).isSubset(of: Set(fdNames)) {
            return names.map { name in (fds[fdNames.firstIndex(of: name)!], name) }
        }
        return fds.enumerated().map { i, f in (f, fdNames.flatMap { $0.count == n ? $0[i] : nil }) }
    }

    private static func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}
