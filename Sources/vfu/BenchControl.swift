import ArgumentParser
import Glibc
import VFIOUserClient
import VFIOUserControl
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu bench --control-compare SPEC`: what the control plane costs on the hot path.
///
/// Two `vfu serve` processes of the same spec, one plain and one with `--control`,
/// measured alternately in the same run with the same 4-byte config REGION_READ; then
/// again with a `watch` client attached to the second (it receives every access).
struct ControlComparison {
    let spec: String
    let iterations: Int
    let runs: Int
    /// Seconds for `n` round trips of the request.
    let time: (MessageSocket, [UInt8], Int) throws -> Double

    struct Result {
        var plain: [Double] = [], control: [Double] = [], plainW: [Double] = [], watched: [Double] = []
        var controlRatios: [Double] = [], watchedRatios: [Double] = []
        var events = 0
        /// The fastest 500-round-trip chunk of each side: interference from the rest of
        /// the machine only ever slows a chunk, so best against best is the steadiest figure.
        var bestPlain = Double.infinity, bestControl = Double.infinity
        var bestPlainW = Double.infinity, bestWatched = Double.infinity
    }

    func run() throws -> Result {
        var template = Array("/tmp/vfu-bench-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        defer {
            for f in ["plain.sock", "ctl.sock", "ctl.control"] { unlink(dir + "/" + f) }
            rmdir(dir)
        }
        let plainPID = try spawnServer(["serve", spec, "--socket", dir + "/plain.sock", "--log-level", "error"])
        let ctlPID = try spawnServer(["serve", spec, "--socket", dir + "/ctl.sock", "--control", dir + "/ctl.control",
                                      "--log-level", "error"])
        defer {
            for p in [plainPID, ctlPID] {
                kill(p, SIGTERM)
                var st: Int32 = 0
                waitpid(p, &st, 0)
            }
        }
        let plain = try connect(dir + "/plain.sock")
        let ctl = try connect(dir + "/ctl.sock")
        defer { plain.close(); ctl.close() }
        let request = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 0),
                                    payload: RegionAccess(offset: 0, region: RegionIndex.config.rawValue, count: 4))
        _ = try plain.read(region: RegionIndex.config.rawValue, offset: 0, count: 4)
        _ = try ctl.read(region: RegionIndex.config.rawValue, offset: 0, count: 4)

        var r = Result()
        // Interleaved in chunks of 500 round trips, alternating which side goes first, so
        // load from anything else on the machine falls on both sides alike.
        var bestA = Double.infinity, bestB = Double.infinity
        func measure(_ a: VFIOUserClient, _ b: VFIOUserClient) throws -> (Double, Double) {
            var ta = 0.0, tb = 0.0
            let chunk = 500
            for k in 0..<max(1, iterations / chunk) {
                let x: Double, y: Double
                if k % 2 == 0 {
                    x = try time(a.socket, request, chunk)
                    y = try time(b.socket, request, chunk)
                } else {
                    y = try time(b.socket, request, chunk)
                    x = try time(a.socket, request, chunk)
                }
                ta += x
                tb += y
                bestA = min(bestA, x)
                bestB = min(bestB, y)
            }
            let n = Double(max(1, iterations / chunk) * chunk)
            return (n / ta, n / tb)
        }
        for _ in 0..<runs {
            let (a, b) = try measure(plain, ctl)
            r.plain.append(a)
            r.control.append(b)
            r.controlRatios.append(b / a)
        }
        (r.bestPlain, r.bestControl) = (bestA, bestB)
        (bestA, bestB) = (.infinity, .infinity)
        // A watcher that reads (and throws away) every event.
        let watcher = try ControlClient(path: dir + "/ctl.control")
        var q = ControlRequest(op: "watch")
        q.kinds = ["access"]
        guard (try? watcher.call(q))?.ok == true else { throw ValidationError("the control server refused watch") }
        // The thread counts in a local and publishes once, after the last event: nothing shared per event.
        let events = Locked(0)
        let t = startThread(name: "vfu-bench-watch") {
            var n = 0
            while (try? watcher.readLine(timeoutMs: -1)) != nil { n += 1 }
            events.withLock { $0 = n }
        }
        for _ in 0..<runs {
            let (a, b) = try measure(plain, ctl)
            r.plainW.append(a)
            r.watched.append(b)
            r.watchedRatios.append(b / a)
        }
        (r.bestPlainW, r.bestWatched) = (bestA, bestB)
        watcher.socket.shutdown()
        pthread_join(t, nil)
        r.events = events.withLock { $0 }
        watcher.close()
        return r
    }

    private func connect(_ path: String) throws -> VFIOUserClient {
        for _ in 0..<500 {
            if let c = try? VFIOUserClient(path: path) { return c }
            usleep(10_000)
        }
        throw ValidationError("no server on \(path)")
    }

    private func spawnServer(_ args: [String]) throws -> pid_t {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = (["vfu"] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let rc = posix_spawn(&pid, "/proc/self/exe", nil, nil, &argv, environ)
        guard rc == 0 else { throw ValidationError("cannot start vfu serve: errno \(rc)") }
        return pid
    }
}
