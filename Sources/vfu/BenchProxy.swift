import ArgumentParser
import Glibc
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu bench --proxy`: what `vfu proxy` adds. A `vfu proxy` child process (no trace,
/// capture or validation) sits in front of the server; each run measures, direct
/// and through the proxy in turn, 4-byte config REGION_READ round trips and 1 MiB
/// REGION_READs of the first BAR that large (with memory decoding turned on for the
/// duration).
struct ProxyBench {
    let socket: String
    let iterations: Int
    let runs: Int
    let json: Bool
    var bulkReads = 200

    func run() throws {
        let dir = String(cString: mkdtemp(strdup("/tmp/vfu-bench-XXXXXX")))
        let listen = dir + "/p.sock"
        let pid = try spawnVFU(["proxy", "--listen", listen, "--connect", socket, "--log-level", "error"])
        defer {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            unlink(listen)
            rmdir(dir)
        }
        var waited = 0
        while access(listen, F_OK) != 0 {
            guard waited < 10_000 else { throw ValidationError("vfu proxy did not start") }
            usleep(10_000)
            waited += 10
        }
        let direct = try VFIOUserClient(path: socket)
        let proxied = try VFIOUserClient(path: listen)
        defer { direct.close(); proxied.close() }
        let bar = try largeBAR(direct)
        // BAR reads need memory decoding on; put the command register back afterwards.
        let command = try direct.readConfig16(0x04)
        if bar != nil { try direct.writeConfig16(0x04, command | 0x2) }
        defer { try? direct.writeConfig16(0x04, command) }
        let small = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 0),
                                  payload: RegionAccess(offset: 0, region: RegionIndex.config.rawValue, count: 4))
        let big = bar.map {
            encodeMessage(MessageHeader(messageID: 2, command: .regionRead, messageSize: 0),
                          payload: RegionAccess(offset: 0, region: $0, count: 1 << 20))
        }
        var lat: (d: [Double], p: [Double]) = ([], []), thr: (d: [Double], p: [Double]) = ([], [])
        for _ in 0..<runs {
            lat.d.append(try seconds(direct.socket, small, iterations) / Double(iterations) * 1e6)
            lat.p.append(try seconds(proxied.socket, small, iterations) / Double(iterations) * 1e6)
            if let big {
                thr.d.append(Double(bulkReads) / (try seconds(direct.socket, big, bulkReads)))
                thr.p.append(Double(bulkReads) / (try seconds(proxied.socket, big, bulkReads)))
            }
        }
        let ld = median(lat.d), lp = median(lat.p)
        if json {
            var s = "{\"iterations\":\(iterations),\"runs\":\(runs),\"direct_rtt_us\":\(fmt(ld)),\"proxy_rtt_us\":\(fmt(lp)),"
                + "\"added_us\":\(fmt(lp - ld))"
            if bar != nil {
                s += ",\"direct_mib_per_s\":\(fmt(median(thr.d))),\"proxy_mib_per_s\":\(fmt(median(thr.p))),"
                    + "\"throughput_ratio\":\(fmt(median(thr.p) / median(thr.d)))"
            }
            print(s + "}")
            return
        }
        for i in 0..<runs {
            var line = "run \(i + 1): 4-byte round trip direct \(fmt(lat.d[i])) us, proxy \(fmt(lat.p[i])) us"
            if bar != nil { line += "; 1 MiB reads direct \(fmt(thr.d[i])) MiB/s, proxy \(fmt(thr.p[i])) MiB/s" }
            print(line)
        }
        print("median: 4-byte round trip direct \(fmt(ld)) us, through vfu proxy \(fmt(lp)) us (+\(fmt(lp - ld)) us)")
        if bar != nil {
            print("median: 1 MiB REGION_READ direct \(fmt(median(thr.d))) MiB/s, through vfu proxy \(fmt(median(thr.p))) MiB/s "
                  + "(ratio \(fmt(median(thr.p) / median(thr.d))))")
        } else {
            print("no readable BAR of 1 MiB or more: throughput not measured")
        }
    }

    /// The first readable BAR of at least 1 MiB.
    private func largeBAR(_ c: VFIOUserClient) throws -> UInt32? {
        for i in 0..<6 {
            let (info, fd) = try c.regionInfo(UInt32(i))
            fd?.close()
            if info.size >= 1 << 20 && info.flags.contains(.read) { return UInt32(i) }
        }
        return nil
    }

    private func seconds(_ sock: MessageSocket, _ request: [UInt8], _ n: Int) throws -> Double {
        let start = now()
        for _ in 0..<n {
            try sock.send(request)
            guard let r = try sock.receive(maxMessageSize: 2 << 20, maxFDs: 0), r.header.isReply, !r.header.isError else {
                throw ValidationError("unexpected reply during the benchmark")
            }
        }
        return now() - start
    }

    private func median(_ x: [Double]) -> Double { x.isEmpty ? 0 : x.sorted()[x.count / 2] }
    private func fmt(_ d: Double) -> String { "\((d * 1000).rounded() / 1000)" }
    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Starts this executable with `args`, stdin/stdout from /dev/null, stderr inherited.
func spawnVFU(_ args: [String]) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    var pid: pid_t = 0
    var argv: [UnsafeMutablePointer<CChar>?] = (["vfu"] + args).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    let rc = posix_spawn(&pid, "/proc/self/exe", &actions, nil, &argv, environ)
    guard rc == 0 else { throw ValidationError("cannot start vfu \(args.first ?? ""): errno \(rc)") }
    return pid
}
