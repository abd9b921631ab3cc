import ArgumentParser
import Glibc
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure 4-byte config-space REGION_READ round trips against a plain socket ping-pong.",
        discussion: """
            Each run times --iterations round trips of a 32-byte REGION_READ and its \
            36-byte reply against the server at --socket, then as many round trips of the \
            same sizes against a baseline peer: a separate process (`vfu bench-echo`) on a \
            Unix socketpair that answers each 32-byte message with 36 bytes and does \
            nothing else, so both sides pay the same cross-process scheduling costs. It \
            prints both rates and their ratio (server / baseline) per run, then the \
            medians over --runs runs.

            --control-compare SPEC instead starts two `vfu serve SPEC` processes, one with \
            --control, and compares their round trips in the same run: first with nothing \
            attached to the control socket, then with a watcher receiving every access.
            """)

    @Option(help: "The server's Unix socket.")
    var socket: String?

    @Option(help: "Compare `vfu serve SPEC` with and without --control (and with a watcher).")
    var controlCompare: String?

    @Option(help: "Round trips per run.")
    var iterations = 20000

    @Option(help: "Runs (the median is reported).")
    var runs = 5

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Flag(help: "Measure what `vfu proxy` adds instead: 4-byte round trips and 1 MiB reads, direct and through a proxy.")
    var proxy = false

    func validate() throws {
        guard (socket == nil) != (controlCompare == nil) else { throw ValidationError("give one of --socket and --control-compare") }
        guard iterations > 0, runs > 0 else { throw ValidationError("--iterations and --runs must be positive") }
    }

    func run() throws {
        if let spec = controlCompare { return try compareControl(spec) }
        if proxy { return try ProxyBench(socket: socket!, iterations: iterations, runs: runs, json: json).run() }
        let client = try VFIOUserClient(path: socket!)
        defer { client.close() }
        let request = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 0),
                                    payload: RegionAccess(offset: 0, region: RegionIndex.config.rawValue, count: 4))
        // Warm up and check that the server answers what we measure.
        _ = try client.read(region: RegionIndex.config.rawValue, offset: 0, count: 4)

        // The baseline peer is a separate process, like the server, so both sides of
        // the comparison pay the same cross-process scheduling costs.
        let (a, b) = try MessageSocket.pair()
        let echo = try spawnEcho(fd: b.fd.rawValue)
        b.fd.close()
        defer {
            a.shutdown()
            var status: Int32 = 0
            waitpid(echo, &status, 0)
        }

        var server: [Double] = [], baseline: [Double] = [], ratios: [Double] = []
        for _ in 0..<runs {
            let s = try rate(client.socket, request)
            let p = try rate(a, request)
            server.append(s)
            baseline.append(p)
            ratios.append(s / p)
        }
        func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }
        if json {
            print("{\"iterations\":\(iterations),\"runs\":\(runs),\"server_rtt_per_s\":\(Int(median(server))),"
                  + "\"baseline_rtt_per_s\":\(Int(median(baseline))),\"ratio\":\(fmt(median(ratios))),"
                  + "\"ratios\":[\(ratios.map(fmt).joined(separator: ","))]}")
        } else {
            for i in 0..<runs {
                print("run \(i + 1): server \(Int(server[i])) rt/s, baseline \(Int(baseline[i])) rt/s, ratio \(fmt(ratios[i]))")
            }
            print("median: server \(Int(median(server))) rt/s (\(fmt(1e6 / median(server))) us/rt), "
                  + "baseline \(Int(median(baseline))) rt/s (\(fmt(1e6 / median(baseline))) us/rt), ratio \(fmt(median(ratios)))")
        }
    }

    private func compareControl(_ spec: String) throws {
        let r = try ControlComparison(spec: spec, iterations: iterations, runs: runs, time: { try self.seconds($0, $1, $2) }).run()
        func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }
        if json {
            print("{\"iterations\":\(iterations),\"runs\":\(runs),\"plain_rtt_per_s\":\(Int(median(r.plain))),"
                  + "\"control_rtt_per_s\":\(Int(median(r.control))),\"control_ratio\":\(fmt(median(r.controlRatios))),"
                  + "\"control_ratios\":[\(r.controlRatios.map(fmt).joined(separator: ","))],"
                  + "\"watched_rtt_per_s\":\(Int(median(r.watched))),\"watched_ratio\":\(fmt(median(r.watchedRatios))),"
                  + "\"watched_ratios\":[\(r.watchedRatios.map(fmt).joined(separator: ","))],\"watch_events\":\(r.events),"
                  + "\"control_best_chunk_ratio\":\(fmt(r.bestPlain / r.bestControl)),\"watched_best_chunk_ratio\":\(fmt(r.bestPlainW / r.bestWatched))}")
        } else {
            for i in 0..<runs {
                print("run \(i + 1): plain \(Int(r.plain[i])) rt/s, --control \(Int(r.control[i])) rt/s, ratio \(fmt(r.controlRatios[i])); "
                      + "watched \(Int(r.watched[i])) rt/s, ratio \(fmt(r.watchedRatios[i]))")
            }
            print("median: plain \(Int(median(r.plain))) rt/s (\(fmt(1e6 / median(r.plain))) us/rt), --control without watcher "
                  + "\(Int(median(r.control))) rt/s, ratio \(fmt(median(r.controlRatios))); with a watcher \(Int(median(r.watched))) rt/s, "
                  + "ratio \(fmt(median(r.watchedRatios))) (\(r.events) events streamed)")
            print("best 500-round-trip chunks: --control / plain \(fmt(r.bestPlain / r.bestControl)), "
                  + "watched / plain \(fmt(r.bestPlainW / r.bestWatched))")
        }
    }

    /// Starts `vfu bench-echo` on the socket `fd` (passed as fd 3).
    private func spawnEcho(fd: Int32) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fd, 3)
        let exe = "/proc/self/exe"
        var pid: pid_t = 0
        let args = ["vfu", "bench-echo", "--fd", "3"]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let rc = posix_spawn(&pid, exe, &actions, nil, &argv, environ)
        guard rc == 0 else { throw ValidationError("cannot start the echo process: errno \(rc)") }
        return pid
    }

    private func fmt(_ d: Double) -> String {
        let v = (d * 1000).rounded() / 1000
        return "\(v)"
    }

    /// Round trips per second of `request` on `sock`.
    private func rate(_ sock: MessageSocket, _ request: [UInt8]) throws -> Double {
        Double(iterations) / (try seconds(sock, request, iterations))
    }

    /// Seconds for `n` round trips of `request` on `sock`.
    private func seconds(_ sock: MessageSocket, _ request: [UInt8], _ n: Int) throws -> Double {
        let start = now()
        for _ in 0..<n {
            try sock.send(request)
            guard let r = try sock.receive(maxMessageSize: 1 << 16, maxFDs: 0), r.bytes.count == 36 else {
                throw ValidationError("unexpected reply during the benchmark")
            }
        }
        return now() - start
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// The baseline peer of `vfu bench`: answers every 32-byte message with 36 bytes,
/// with nothing but read and write in between.
struct BenchEchoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-echo", shouldDisplay: false)

    @Option var fd: Int32

    func run() throws {
        var buf = [UInt8](repeating: 0, count: 32)
        var reply = [UInt8](repeating: 0, count: 36)
        reply[4] = 36
        reply[8] = 1
        while true {
            var got = 0
            while got < 32 {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, 32 - got) }
                if n <= 0 { return }
                got += n
            }
            reply[0] = buf[0]
            reply[1] = buf[1]
            let w = reply.withUnsafeBytes { write(fd, $0.baseAddress!, 36) }
            if w != 36 { return }
        }
    }
}
