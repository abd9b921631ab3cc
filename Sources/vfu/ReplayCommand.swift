import ArgumentParser
import Glibc
import VFIOUserCapture
import VFIOUserProxy

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a capture's client side against a server and report where the replies differ.",
        discussion: """
            CAPTURE is a pcapng file written by `vfu proxy --pcap` or `vfu serve --pcap`. \
            The client messages of one connection (--connection, default the first) are \
            sent in order, fds replaced by fresh memfds (of the recorded size) and eventfds, \
            and every reply is compared byte for byte with the captured one. Exit status 1 \
            when any reply differs.
            """)

    @Argument(help: "The capture (pcapng).")
    var capture: String

    @Option(help: "The server's Unix socket.")
    var socket: String

    @Option(help: "Which captured connection to replay (default: the first).")
    var connection: UInt32?

    @Option(help: "Milliseconds to wait for each reply.")
    var timeoutMs = 5000

    func run() throws {
        let bytes: [UInt8]
        do { bytes = try readFile(capture) } catch {
            printError("vfu: error: \(error)")
            throw ExitCode(2)
        }
        let records: [CaptureRecord]
        do { records = try Pcapng.records(in: bytes) } catch {
            printError("vfu: error: \(capture): \(error)")
            throw ExitCode(2)
        }
        var replayer = Replayer(records: records, connection: connection)
        replayer.timeoutMs = timeoutMs
        guard !replayer.records.isEmpty else {
            printError("vfu: error: \(capture) has no messages of connection \(replayer.connection)")
            throw ExitCode(2)
        }
        let report = try replayer.run(socketPath: socket)
        for s in report.skipped { print("SKIP \(s)") }
        for d in report.differences { print("DIFF \(d)") }
        print("connection \(replayer.connection): \(report.sent) messages sent, \(report.compared) replies compared, "
              + "\(report.identical) identical, \(report.differences.count) differ, \(report.skipped.count) skipped")
        if !report.differences.isEmpty { throw ExitCode(1) }
    }
}

/// A whole file's bytes.
func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ValidationError("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { throw ValidationError("cannot read \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
        out += buf[0..<n]
    }
    return out
}
