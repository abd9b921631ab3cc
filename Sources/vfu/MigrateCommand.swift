import MigrationStream
import ArgumentParser
import DeviceSpecs
import Glibc
import Logging
@_spi(Server) import PCICore
import VariantDevices
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Live-migrate a device between two vfio-user servers, or save/restore its state to a file.",
        discussion: """
            --from SOCK --to SOCK: pre-copy rounds while the source keeps running, until what is \
            left falls under --threshold or --max-rounds is reached; then stop-copy, and the \
            destination validates the stream and resumes. If anything fails the source is put \
            back to RUNNING.

            --from SOCK --to-file F saves the same stream (the source is left stopped unless \
            --keep-running); --from-file F --to SOCK loads it.

            Guest RAM is the VMM's business: this tool moves device state only \
            (docs/migration.md). This tool never owns a device (docs/architecture.md): it \
            works next to the VMMs, and a destination keeps the loaded state until its \
            owning VMM leaves.

            --bench measures stop-copy of a --bench-size device between two in-process servers \
            against a plain copy of the same bytes over a Unix socket.
            """)

    @Option(help: "Source server socket.") var from: String?
    @Option(help: "Destination server socket.") var to: String?
    @Option(name: .customLong("to-file"), help: "Save the stream to this file.") var toFile: String?
    @Option(name: .customLong("from-file"), help: "Load the stream from this file.") var fromFile: String?
    @Option(help: "Largest MIG_DATA_READ/WRITE in bytes (limited by both servers).") var chunk: Int = 8 << 20
    @Option(name: .customLong("max-rounds"), help: "Most pre-copy rounds.") var maxRounds: Int = 8
    @Option(help: "Stop pre-copy once at most this many bytes are left.") var threshold: UInt64 = 4 << 20
    @Flag(name: .customLong("no-pre-copy"), help: "Go straight to stop-copy.") var noPreCopy = false
    @Flag(name: .customLong("keep-running"), help: "With --to-file: return the source to RUNNING after the save.") var keepRunning = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Flag(help: "Run the stop-copy benchmark instead.") var bench = false
    @Flag(help: "Relay every byte through this client (MIG_DATA_READ/WRITE) even when both servers offer the direct data path.")
    var relay = false
    @Option(name: .customLong("bench-size"), help: "Device RAM for --bench, in MiB (≤ 1024).") var benchSize: Int = 256
    @Option(help: "Benchmark runs (the median is reported).") var runs: Int = 3
    @Flag(help: "With --bench: the source copies its RAM into the stream instead of passing its pages by reference.")
    var copy = false

    func validate() throws {
        if bench { return }
        guard (from == nil) != (fromFile == nil) else { throw ValidationError("give exactly one of --from and --from-file") }
        guard (to == nil) != (toFile == nil) else { throw ValidationError("give exactly one of --to and --to-file") }
        guard fromFile == nil || to != nil else { throw ValidationError("--from-file needs --to") }
        guard (4096...(64 << 20)).contains(chunk) else { throw ValidationError("--chunk must be 4096...67108864") }
        // Checked before connecting: both ends on one server would leave it in ERROR.
        if let from, let to, sameFile(from, to) {
            throw ValidationError("--from and --to are the same server (\(from)): a device cannot migrate onto itself")
        }
        if let fromFile, let toFile, sameFile(fromFile, toFile) {
            throw ValidationError("--from-file and --to-file are the same file")
        }
    }

    /// Whether two paths name one file (the same inode, through any links), or one path twice.
    private func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        if stat(a, &sa) == 0, stat(b, &sb) == 0 { return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino }
        return a == b
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        if bench { return try runBench() }
        let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: chunk, pgsizes: 4096, maxDMAMaps: 65535,
                                       extensions: relay ? nil : ["mig-data-fd": "1"])
        func connect(_ path: String) throws -> VFIOUserClient {
            do { return try VFIOUserClient(path: path, capabilities: caps) } catch {
                printError("vfu: error: cannot connect to \(path): \(error)")
                throw ExitCode(1)
            }
        }
        let src: MigrationEndpoint = try from.map { .device(try connect($0)) } ?? .file(fromFile!)
        let dst: MigrationEndpoint = try to.map { .device(try connect($0)) } ?? .file(toFile!)
        var m = Migrator(source: src, destination: dst)
        m.chunkSize = chunk
        m.maxRounds = maxRounds
        m.threshold = threshold
        m.preCopy = !noPreCopy
        m.resumeSourceAfterSave = keepRunning
        let bar = ProgressBar(enabled: isatty(2) == 1)
        m.progress = { bar.update($0) }
        do {
            let r = try m.run()
            bar.finish()
            if json { print(r.json) } else { print(summary(r)) }
        } catch {
            bar.finish()
            printError("vfu: error: \(error)")
            if json { print("{\"error\":\"\(String(error.description.map { $0 == "\"" ? "'" : $0 }))\"}") }
            throw ExitCode(1)
        }
    }

    /// One line saying what happened, in the terms of what happened: a save to a file
    /// has no downtime (nothing resumes), and a rate is shown only for a transfer big
    /// and long enough for it to mean throughput rather than latency.
    func summary(_ r: MigrationReport) -> String {
        let rounds = r.preCopyRounds > 0 ? "\(r.preCopyRounds) pre-copy round(s) (\(mib(r.preCopyBytes))) + " : ""
        let stop = "stop-copy \(mib(r.stopCopyBytes)) in \(duration(r.stopCopySeconds))" + (rate(r.stopCopyBytes, r.stopCopySeconds).map { ", \($0)" } ?? "")
        if let toFile {
            let after = keepRunning ? "the source is running again" : "the source is left stopped (--keep-running resumes it)"
            return "saved to \(toFile): \(rounds)\(stop), \(mib(r.totalBytes)) in all; \(after)"
        }
        if let fromFile {
            return "loaded \(mib(r.stopCopyBytes)) from \(fromFile) in \(duration(r.stopCopySeconds))"
                + (rate(r.stopCopyBytes, r.stopCopySeconds).map { " (\($0))" } ?? "") + "; the destination is running"
        }
        return "migrated: \(rounds)\(stop); downtime \(duration(r.downtimeSeconds))"
    }

    // MARK: Benchmark

    private func runBench() throws {
        guard (1...1024).contains(benchSize), benchSize.nonzeroBitCount == 1 else {
            throw ValidationError("--bench-size must be a power of two from 1 to 1024 (MiB)")
        }
        var template = Array("/tmp/vfu-mig-bench-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        defer { _ = Glibc.rmdir(dir) }
        let spec = MigratableVFDriver.minimalSpec(ramKiB: benchSize << 10)
        let registry = VariantRegistry.standard
        let parsed = try DeviceSpec.parse(Array(spec.utf8), file: "<bench>", sectionKeys: registry.sectionKeys)
        let driver = MigratableVFDriver()
        var options = ServerOptions()
        options.maxDataXferSize = chunk
        options.migrationZeroCopy = !copy
        let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: chunk, pgsizes: 4096, maxDMAMaps: 65535,
                                       extensions: relay ? nil : ["mig-data-fd": "1"])
        var logger = Logger(label: "vfu-bench")
        logger.logLevel = .warning
        let bytes = benchSize << 20

        var migrate: [Double] = [], downtime: [Double] = [], plain: [Double] = [], ratios: [Double] = []
        for run in 0..<runs {
            let a = try driver.build(parsed), b = try driver.build(parsed)
            guard let ram = a.barMemory[2] else { throw ValidationError("no RAM BAR") }
            fillRandom(ram.mapping.base, bytes, seed: UInt64(run + 1))
            // The destination's RAM is faulted in beforehand, as the plain copy's buffer is:
            // both sides then measure moving bytes, not the kernel allocating pages.
            if let dst = b.barMemory[2] { memset(dst.mapping.base, 0, bytes) }
            let sa = VFIOUserServer(device: a, options: options, logger: logger)
            let sb = VFIOUserServer(device: b, options: options, logger: logger)
            let pa = dir + "/a.sock", pb = dir + "/b.sock"
            sa.start(on: try UnixListener(path: pa))
            sb.start(on: try UnixListener(path: pb))
            // A VMM stays connected to the destination, so it does not reset when we leave.
            let vmmA = try VFIOUserClient(path: pa), vmmB = try VFIOUserClient(path: pb)
            let ca = try VFIOUserClient(path: pa, capabilities: caps), cb = try VFIOUserClient(path: pb, capabilities: caps)
            var m = Migrator(source: .device(ca), destination: .device(cb))
            m.chunkSize = chunk
            m.preCopy = false
            let r = try m.run()
            let ok = digest(a) == digest(b)
            ca.close(); cb.close(); vmmA.close(); vmmB.close()
            sa.stop(); sb.stop()
            guard ok else { throw ValidationError("the destination's RAM differs from the source's") }
            let base = try plainCopy(from: ram.mapping.base, count: bytes)
            migrate.append(r.stopCopySeconds)
            downtime.append(r.downtimeSeconds)
            plain.append(base)
            ratios.append(base / r.stopCopySeconds)
            if !json {
                print("run \(run + 1): stop-copy \(mib(r.stopCopyBytes)) in \(fmt(r.stopCopySeconds * 1000)) ms "
                      + "(\(fmt(Double(r.stopCopyBytes) / r.stopCopySeconds / 1_048_576)) MiB/s), downtime \(fmt(r.downtimeSeconds * 1000)) ms; "
                      + "plain socket copy \(fmt(base * 1000)) ms (\(fmt(Double(bytes) / base / 1_048_576)) MiB/s); ratio \(fmt(base / r.stopCopySeconds))")
            }
        }
        func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }
        let pathName = relay ? "relayed" : copy ? "direct, copying" : "direct, zero-copy"
        let mm = median(migrate), pm = median(plain)
        if json {
            print("{\"bytes\":\(bytes),\"chunk\":\(chunk),\"runs\":\(runs),\"path\":\"\(pathName)\",\"stop_copy_ms\":\(fmt(mm * 1000)),"
                  + "\"stop_copy_mib_s\":\(fmt(Double(bytes) / mm / 1_048_576)),\"downtime_ms\":\(fmt(median(downtime) * 1000)),"
                  + "\"plain_copy_ms\":\(fmt(pm * 1000)),\"plain_copy_mib_s\":\(fmt(Double(bytes) / pm / 1_048_576)),"
                  + "\"ratio\":\(fmt(median(ratios))),\"ratios\":[\(ratios.map(fmt).joined(separator: ","))]}")
        } else {
            print("median (\(pathName)): stop-copy \(fmt(mm * 1000)) ms, downtime \(fmt(median(downtime) * 1000)) ms, plain copy \(fmt(pm * 1000)) ms, "
                  + "ratio \(fmt(median(ratios))) (plain time / stop-copy time; target >= 0.8)")
        }
    }

    private func digest(_ d: PCIDevice) -> UInt64 {
        guard let m = d.barMemory[2] else { return 0 }
        return d.lock.withLock { XXH3.hash(UnsafeRawBufferPointer(start: m.mapping.base, count: m.size)) }
    }

    private func fillRandom(_ p: UnsafeMutableRawPointer, _ n: Int, seed: UInt64) {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        let words = p.bindMemory(to: UInt64.self, capacity: n / 8)
        for i in 0..<(n / 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            words[i] = x
        }
    }

    /// Seconds to move `count` bytes through a Unix socket pair, `chunk` bytes per
    /// write, from one thread into a buffer on another.
    private func plainCopy(from src: UnsafeMutableRawPointer, count: Int) throws -> Double {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw ValidationError("socketpair failed") }
        let (w, r) = (fds[0], fds[1])
        // The same socket buffers the direct migration path asks for, so the two
        // transfers differ only in what the migration does on top.
        var bufferSize: Int32 = 8 << 20
        for fd in [w, r] {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
        }
        let dst = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        defer { dst.deallocate(); close(r) }
        memset(dst, 0, count)   // fault the pages in first, as the device RAM already is
        let size = count, step = chunk
        let source = UInt(bitPattern: src)
        let start = now()
        spawnThread(name: "bench-plain") {
            let p = UnsafeRawPointer(bitPattern: source)!
            var done = 0
            while done < size {
                let n = write(w, p + done, min(step, size - done))
                if n <= 0 { break }
                done += n
            }
            close(w)
        }
        var got = 0
        while got < count {
            let n = read(r, dst + got, count - got)
            if n <= 0 { break }
            got += n
        }
        let t = now() - start
        guard got == count, memcmp(src, dst, count) == 0 else { throw ValidationError("plain copy lost bytes") }
        return t
    }
}

private func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

private func fmt(_ d: Double) -> String { String(Double(Int((d * 100).rounded())) / 100) }

/// Bytes in the unit that reads best: "512 B", "12.5 KiB", "64.0 MiB".
func mib(_ b: UInt64) -> String {
    if b < 1024 { return "\(b) B" }
    if b < 1 << 20 { return "\(fmt(Double(b) / 1024)) KiB" }
    return "\(fmt(Double(b) / 1_048_576)) MiB"
}

/// "4.2 ms" or "1.35 s".
func duration(_ s: Double) -> String { s < 1 ? "\(fmt(s * 1000)) ms" : "\(fmt(s)) s" }

/// "123.4 MiB/s", or nil when the transfer is too small (< 1 MiB) or too short (< 50 ms)
/// for bytes / seconds to measure throughput rather than a round trip's latency.
func rate(_ bytes: UInt64, _ seconds: Double) -> String? {
    guard bytes >= 1 << 20, seconds >= 0.05 else { return nil }
    return "\(fmt(Double(bytes) / seconds / 1_048_576)) MiB/s"
}

/// A one-line progress bar on stderr: phase, bytes, rate, remaining.
final class ProgressBar {
    let enabled: Bool
    private var last = 0.0
    private var lastPhase: MigrationProgress.Phase?
    private var shown = false
    init(enabled: Bool) { self.enabled = enabled }

    /// Redraws at most every 0.1 s, and always when a phase or round starts or ends.
    func update(_ p: MigrationProgress) {
        let boundary = p.phase != lastPhase || p.remaining == 0
        guard enabled, boundary || p.elapsed - last >= 0.1 else { return }
        last = p.elapsed
        lastPhase = p.phase
        let shownRate = rate(p.bytes, p.elapsed)
        var line = "\r\(p.phase.rawValue)"
        if p.phase == .preCopy { line += " round \(p.round + 1)" }
        if let rem = p.remaining {
            let total = Double(p.phaseBytes + rem)
            let filled = total > 0 ? Int(Double(p.phaseBytes) / total * 30) : 30
            line += " [" + String(repeating: "#", count: filled) + String(repeating: "-", count: 30 - filled) + "]"
            line += " \(mib(p.bytes))" + (shownRate.map { "  \($0)" } ?? "") + "  remaining \(mib(rem))"
        } else {
            line += " \(mib(p.bytes))" + (shownRate.map { "  \($0)" } ?? "")
        }
        printRaw(line + "\u{1B}[K")
        shown = true
    }

    func finish() { if shown { printRaw("\n") } }

    private func printRaw(_ s: String) { _ = s.withCString { write(2, $0, strlen($0)) } }
}
