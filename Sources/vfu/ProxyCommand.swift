import ArgumentParser
import Glibc
import Logging
import VFIOUserCapture
import VFIOUserProxy
import VFIOUserTransport

struct ProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Sit between a vfio-user client and server: forward everything, trace, capture, validate.",
        discussion: """
            Every client that connects to --listen gets its own connection to --connect; \
            bytes and fds are forwarded unchanged and in order both ways. --trace logs each \
            message decoded with its fds, --pcap writes a pcapng capture that Wireshark and \
            tshark open with contrib/wireshark/vfio-user.lua, --validate logs every deviation \
            from the protocol with the rule it breaks. See docs/debugging.md.

            SIGINT and SIGTERM stop the proxy and remove its socket.
            """)

    @Option(help: "Unix socket path to listen on (clients connect here).")
    var listen: String

    @Option(help: "The server's Unix socket path.")
    var connect: String

    @Flag(help: "Log every message, decoded, with the fds it carried.")
    var trace = false

    @Option(help: "Write a pcapng capture of every message to this file.")
    var pcap: String?

    @Option(help: "Bytes kept of each packet (at most 262144, what Wireshark reads).")
    var snapLength = Pcapng.defaultSnapLength

    @Flag(name: .customLong("validate"), help: "Check both directions against the protocol and log each deviation.")
    var validateProtocol = false

    @Option(help: "Log level.")
    var logLevel: LogLevelOption = .info

    func validate() throws {
        guard (64...Pcapng.maxSnapLength).contains(snapLength) else {
            throw ValidationError("--snap-length must be 64...\(Pcapng.maxSnapLength)")
        }
    }

    func run() throws {
        let logger = makeLogger(level: (trace || validateProtocol) && logLevel.level > .info ? .info : logLevel)
        let stopSignals = blockStopSignals()
        let recorder: MessageRecorder
        do { recorder = try makeRecorder(pcap: pcap, snapLength: snapLength, trace: trace, validate: validateProtocol, logger: logger) } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(1)
        }
        let listener: UnixListener
        do { listener = try UnixListener(path: listen) } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(1)
        }
        let proxy = VFIOUserProxy(upstreamPath: connect, recorder: recorder, logger: logger)
        spawnThread(name: "vfu-signals") {
            var s = stopSignals
            var sig: Int32 = 0
            sigwait(&s, &sig)
            logger.info("signal \(sig): stopping")
            proxy.stop()
        }
        logger.info("proxying \(listen) -> \(connect)")
        proxy.serve(on: listener)
        listener.close()
        recorder.capture?.close()
        logger.info("stopped")
    }
}

/// Blocks SIGINT and SIGTERM in every thread (one thread waits for them) and ignores SIGPIPE.
func blockStopSignals() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &set, nil)
    signal(SIGPIPE, SIG_IGN)
    return set
}

/// The recorder behind --trace, --pcap and --validate.
func makeRecorder(pcap: String?, snapLength: Int, trace: Bool, validate: Bool, logger: Logger) throws -> MessageRecorder {
    var settings = MessageRecorder.Settings()
    settings.trace = trace
    settings.validate = validate
    settings.snapLength = snapLength
    let capture = try pcap.map { try CaptureFile(path: $0, snapLength: snapLength) }
    return MessageRecorder(capture: capture, settings: settings, logger: logger)
}
