import Glibc
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu migrate` as a user runs it: between `vfu serve` processes, through a file, its
/// refusals, and the benchmark.
@Suite struct MigrateCommandTests {
    /// Runs `vfu ARGS` to completion: its status, stdout and stderr.
    func vfu(_ args: [String], _ dir: String, _ tag: String) throws -> (ChildStatus?, String, String) {
        let p = try VFUProcess(arguments: args, stderrPath: "\(dir)/\(tag).err")
        let status = p.wait(timeoutMs: 120_000)
        if status == nil { p.kill() }
        return (status, readWholeFile(p.stderrPath + ".out"), p.stderr)
    }

    /// The number after `"key":` in a flat JSON summary.
    func number(_ key: String, in json: String) -> Double? {
        let marker = Array("\"\(key)\":".utf8), bytes = Array(json.utf8)
        guard bytes.count >= marker.count,
              let at = (0...(bytes.count - marker.count)).first(where: { bytes[$0..<($0 + marker.count)].elementsEqual(marker) })
        else { return nil }
        let digits = bytes[(at + marker.count)...].prefix { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: ".") }
        return Double(String(decoding: digits, as: UTF8.self))
    }

    @Test func aDeviceMovesBetweenServeProcessesAndThroughAFile() throws {
        let dir = makeTempDir("migrate-cli")
        defer { removeTempDir(dir) }
        let spec = specPath("migratable-vf.json")
        let servers = try ["a", "b", "c"].map { try VFUProcess.serve(spec: spec, socket: "\(dir)/\($0).sock") }
        defer { servers.forEach { $0.kill() } }
        // VMMs stay connected: a device resets when its last client leaves.
        let vmms = try ["a", "b", "c"].map { try makeClient("\(dir)/\($0).sock") }
        let pattern = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let (_, ramA) = try vmms[0].mapRegion(2)
        _ = ramA.write(at: 0x12_3000, pattern)

        let (s1, out1, err1) = try vfu(["migrate", "--from", "\(dir)/a.sock", "--to", "\(dir)/b.sock", "--json"], dir, "live")
        #expect(s1 == .exited(0), "\(err1)")
        // --json: stdout is the one-line summary and nothing else (diagnostics go to stderr).
        #expect(out1.hasPrefix("{") && out1.hasSuffix("}\n") && out1.filter { $0 == "\n" }.count == 1, "\(out1)")
        #expect(!err1.contains("pre-copy round"), "a progress bar without a terminal: \(err1)")
        #expect((number("total_bytes", in: out1) ?? 0) >= 64 * 1_048_576, "\(out1)")
        #expect(number("downtime_ms", in: out1) != nil && out1.contains("\"rounds\":"), "\(out1)")
        #expect(try vmms[0].migrationState() == .stop)
        #expect(try vmms[1].migrationState() == .running)
        let (_, ramB) = try vmms[1].mapRegion(2)
        #expect(ramB.read(at: 0x12_3000, count: pattern.count) == pattern)

        let file = "\(dir)/dev.vfumig"
        let (s2, _, err2) = try vfu(["migrate", "--from", "\(dir)/b.sock", "--to-file", file, "--keep-running"], dir, "save")
        #expect(s2 == .exited(0), "\(err2)")
        #expect(try vmms[1].migrationState() == .running)
        let (s3, _, err3) = try vfu(["migrate", "--from-file", file, "--to", "\(dir)/c.sock"], dir, "load")
        #expect(s3 == .exited(0), "\(err3)")
        let (_, ramC) = try vmms[2].mapRegion(2)
        #expect(ramC.read(at: 0x12_3000, count: pattern.count) == pattern)

        // A file damaged in its middle is refused, and says why.
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_size > 64 * 1_048_576)
        let f = fopen(file, "r+b")!
        fseek(f, st.st_size / 2, SEEK_SET)
        var flipped = UInt8(0)
        fread(&flipped, 1, 1, f)
        flipped ^= 0x10
        fseek(f, st.st_size / 2, SEEK_SET)
        fwrite(&flipped, 1, 1, f)
        fclose(f)
        let (s4, _, err4) = try vfu(["migrate", "--from-file", file, "--to", "\(dir)/c.sock"], dir, "corrupt")
        #expect(s4 == .exited(1), "\(err4)")
        #expect(err4.contains("corrupted"), "\(err4)")
    }

    /// On a terminal (script(1) gives it one) `vfu migrate` draws a progress bar per
    /// phase: bytes, rate and what remains; through messages it advances per chunk.
    @Test func onATerminalAProgressBarShowsBytesRateAndRemaining() throws {
        let dir = makeTempDir("migrate-tty")
        defer { removeTempDir(dir) }
        let spec = specPath("migratable-vf.json")
        let servers = try ["a", "b"].map { try VFUProcess.serve(spec: spec, socket: "\(dir)/\($0).sock") }
        defer { servers.forEach { $0.kill() } }
        let keep = try makeClient("\(dir)/b.sock")
        defer { keep.close() }
        guard let pipe = popen("script -q -e -c '\(vfuPath) migrate --from \(dir)/a.sock --to \(dir)/b.sock --relay' /dev/null 2>&1", "r") else {
            throw TestFailure("popen script failed")
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, pipe)
            if n == 0 { break }
            out += buf[0..<n]
        }
        #expect(pclose(pipe) == 0)
        let lines = String(decoding: out, as: UTF8.self).split(whereSeparator: { $0 == "\r" || $0 == "\n" || $0 == "\r\n" })
        let bars = lines.filter { $0.hasPrefix("pre-copy round 1 [") }
        #expect(bars.count >= 2, "\(lines)")   // it advanced during the round
        // A rate appears once enough has moved for long enough to mean throughput.
        #expect(bars.allSatisfy { $0.contains("remaining ") }, "\(bars)")
        #expect(bars.last?.contains(" MiB/s") == true, "\(bars)")
        #expect(bars.last?.contains("[" + String(repeating: "#", count: 30) + "]") == true, "\(bars)")
        #expect(lines.contains { $0.hasPrefix("stop-copy [") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("migrated: 1 pre-copy round(s)") }, "\(lines)")
    }

    @Test func theBenchmarkReportsItsRatioAsJSON() throws {
        let dir = makeTempDir("migrate-bench")
        defer { removeTempDir(dir) }
        let (s, out, err) = try vfu(["migrate", "--bench", "--bench-size", "8", "--runs", "1", "--json"], dir, "bench")
        #expect(s == .exited(0), "\(err)")
        #expect((number("ratio", in: out) ?? 0) > 0, "\(out)")
        #expect(out.contains("\"path\":\"direct, zero-copy\""), "\(out)")
    }
}
