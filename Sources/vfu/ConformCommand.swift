import ArgumentParser
import VFIOUserConformance

struct ConformCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conform",
        abstract: "Check any vfio-user server against the protocol and QEMU's needs.",
        discussion: """
            Runs negotiation, information, region, interrupt, message-handling, DMA, reset \
            and migration checks over the server's socket and prints PASS/FAIL/WARN/SKIP per \
            check, then "N passed, M failed, ...". Exit status 1 if any check failed.

            It writes only config-space scratch fields; DMA mappings it makes are removed. \
            A server that serves one client at a time (libvfio-user's model) is found out and \
            checked over one connection.
            """)

    @Option(help: "The server's Unix socket.")
    var socket: String

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(help: "Milliseconds to wait for each reply.")
    var timeoutMs: Int32 = 3000

    @Option(help: "How the server takes clients: auto (find out), concurrent, or one-at-a-time (libvfio-user's model: the checks share one connection).")
    var connections: String = "auto"

    @Flag(help: "Also run checks that change the device's state (migration arcs, a stop-copy stream). Never on a device in use.")
    var disruptive = false

    func validate() throws {
        guard connections == "auto" || ConnectionModel(rawValue: connections) != nil else {
            throw ValidationError("--connections must be auto, concurrent or one-at-a-time")
        }
    }

    func run() throws {
        let report = ConformanceSuite(socketPath: socket, timeoutMs: timeoutMs,
                                      connectionModel: ConnectionModel(rawValue: connections), disruptive: disruptive).run()
        print(json ? report.json : report.text)
        if report.count(.fail) > 0 { throw ExitCode(1) }
    }
}
