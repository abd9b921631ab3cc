import ArgumentParser
import VFIOUserConformance

struct ConformCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conform",
        abstract: "Check any vfio-user server against the protocol and QEMU's needs.",
        discussion: """
            Runs negotiation, information, region, config-space, interrupt, message-handling, \
            framing, DMA, transfer, reset and migration checks over the server's socket and \
            prints PASS/FAIL/WARN/SKIP per check (id, what was seen, the protocol section), \
            then "N passed, M failed, ...". Exit status 1 if any check failed.

            With --socket it checks a running server and writes only config-space scratch \
            fields; DMA mappings it makes are removed. A server that serves one client at a \
            time (libvfio-user's model) is found out and checked over one connection.

            With --server-cmd 'CMD {sock}' the suite runs the server itself ({sock} is replaced \
            by a socket path of its choosing), relaunches it whenever a check needs a fresh one \
            or it has gone, records how each launch ended (a signal is a crash), and also runs \
            the checks that change device state (as --disruptive).
            """)

    @Option(help: "The server's Unix socket.")
    var socket: String?

    @Option(name: .customLong("server-cmd"), help: "Run the server under test: a shell command with {sock} where its socket path goes.")
    var serverCmd: String?

    @Option(name: .customLong("server-log"), help: "With --server-cmd: append the server's output to this file (default: a temporary file, removed).")
    var serverLog: String?

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(help: "Also write the report as JUnit XML to this file.")
    var junit: String?

    @Option(help: "With --server-cmd: milliseconds the server may take to create its socket.")
    var launchTimeoutMs: Int = 10_000

    @Option(help: "Milliseconds to wait for each reply.")
    var timeoutMs: Int32 = 3000

    @Option(help: "How the server takes clients: auto (find out), concurrent, or one-at-a-time (libvfio-user's model: the checks share one connection).")
    var connections: String = "auto"

    @Flag(help: "Also run checks that change the device's state (migration arcs, a stop-copy stream, BAR sizing, reset state). Never on a device in use.")
    var disruptive = false

    func validate() throws {
        guard connections == "auto" || ConnectionModel(rawValue: connections) != nil else {
            throw ValidationError("--connections must be auto, concurrent or one-at-a-time")
        }
        guard (socket == nil) != (serverCmd == nil) else {
            throw ValidationError("give either --socket PATH or --server-cmd 'CMD {sock}'")
        }
        if let serverCmd, !serverCmd.contains("{sock}") {
            throw ValidationError("--server-cmd needs {sock} where the server's socket path goes")
        }
    }

    func run() throws {
        let report = ConformanceSuite(socketPath: socket ?? "", timeoutMs: timeoutMs,
                                      connectionModel: ConnectionModel(rawValue: connections), disruptive: disruptive,
                                      serverCommand: serverCmd, launchTimeoutMs: launchTimeoutMs, serverLogPath: serverLog).run()
        print(json ? report.json : report.text)
        if let junit, !report.writeJUnit(to: junit) {
            throw ValidationError("cannot write the JUnit report to \(junit)")
        }
        if report.count(.fail) > 0 { throw ExitCode(1) }
    }
}
