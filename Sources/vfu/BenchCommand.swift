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
            Each run times N round trips of a 32-byte REGION_READ and its 36-byte reply
            against the server at --socket, then N round trips of the same sizes against a
            plain echo thread on a Unix socketpair in this process. It prints both rates
            and their ratio (server / baseline); the summary is the median over the runs.
            """)

    @Option(help: "The server's Unix socket.")
    var socket: String

    @Option(help: "Round trips per run.")
    var iterations = 20000

    @Option(help: "Runs (the median is reported).")
    var runs = 5

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func run() throws {
        let client = try VFIOUserClient(path: socket)
        defer { client.close() }
        let request = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 0),
                                    payload: RegionAccess(offset: 0, region: RegionIndex.config.rawValue, count: 4))
        // Warm up and check that the server answers what we measure.
        _ = try client.read(region: RegionIndex.config.rawValue, offset: 0, count: 4)

        let (a, b) = try MessageSocket.pair()
        let replySize = 36
        spawnThread(name: "vfu-bench-echo") {
            var buf = [UInt8](repeating: 0, count: 64)
            var reply = [UInt8](repeating: 0, count: replySize)
            reply[4] = UInt8(replySize)
            reply[8] = 1
            while true {
                guard (try? b.receive(maxMessageSize: 64, maxFDs: 0)) != nil else { break }
                buf[0] &+= 1
                guard (try? b.send(reply)) != nil else { break }
            }
            b.fd.close()
        }

        var server: [Double] = [], baseline: [Double] = [], ratios: [Double] = []
        for _ in 0..<runs {
            let s = try rate(client.socket, request)
            let p = try rate(a, request)
            server.append(s)
            baseline.append(p)
            ratios.append(s / p)
        }
        a.shutdown()
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

    private func fmt(_ d: Double) -> String {
        let v = (d * 1000).rounded() / 1000
        return "\(v)"
    }

    /// Round trips per second of `request` on `sock`.
    private func rate(_ sock: MessageSocket, _ request: [UInt8]) throws -> Double {
        let start = now()
        for _ in 0..<iterations {
            try sock.send(request)
            guard let r = try sock.receive(maxMessageSize: 1 << 16, maxFDs: 0), r.bytes.count == 36 else {
                throw ValidationError("unexpected reply during the benchmark")
            }
        }
        return Double(iterations) / (now() - start)
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
