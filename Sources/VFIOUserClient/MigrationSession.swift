import Glibc
import Synchronization
import VFIOUserProtocol
import VFIOUserTransport

/// Where a device's migration stream comes from or goes to.
public enum MigrationEndpoint: Sendable {
    /// A device served by a vfio-user server (the connection is used for migration only).
    case device(VFIOUserClient)
    /// A file holding exactly the stream.
    case file(String)
}

/// Progress, reported after each chunk.
public struct MigrationProgress: Sendable {
    /// Where the migration is.
    public enum Phase: String, Sendable {
        /// The source runs while its state is copied, round after round.
        case preCopy = "pre-copy"
        /// The source is stopped; the rest of its state is copied.
        case stopCopy = "stop-copy"
        /// The destination loads what it received.
        case resume = "resume"
    }
    /// The current phase.
    public var phase: Phase
    /// Pre-copy round, from 0.
    public var round: Int
    /// Stream bytes moved so far, all phases.
    public var bytes: UInt64
    /// Stream bytes moved in this phase.
    public var phaseBytes: UInt64
    /// The device's estimate of what is left in this phase, if it gives one.
    public var remaining: UInt64?
    /// Seconds since the start.
    public var elapsed: Double
}

/// What a migration did.
public struct MigrationReport: Sendable {
    /// Pre-copy rounds run.
    public var preCopyRounds = 0
    /// Stream bytes moved during pre-copy.
    public var preCopyBytes: UInt64 = 0
    /// Stream bytes moved during stop-copy.
    public var stopCopyBytes: UInt64 = 0
    /// Bytes the source still reported (initial + dirty) when it was stopped.
    public var remainingAtStop: UInt64 = 0
    /// Seconds spent in pre-copy.
    public var preCopySeconds = 0.0
    /// STOP_COPY requested → last byte delivered.
    public var stopCopySeconds = 0.0
    /// Whether stop-copy went straight from source to destination (mig-data-fd).
    public var directDataPath = false
    /// Source stopped (STOP_COPY requested) → destination RUNNING (or the file closed).
    public var downtimeSeconds = 0.0
    /// Seconds from start to finish.
    public var totalSeconds = 0.0
    /// Stream bytes moved in all.
    public var totalBytes: UInt64 { preCopyBytes + stopCopyBytes }
    /// Stop-copy bytes per second (0 when stop-copy took no measurable time).
    public var stopCopyThroughput: Double { stopCopySeconds > 0 ? Double(stopCopyBytes) / stopCopySeconds : 0 }

    /// One JSON object (the `vfu migrate --json` summary).
    public var json: String {
        func f(_ d: Double) -> String { String(Double(Int((d * 1_000_000).rounded())) / 1_000_000) }
        return "{\"pre_copy\":{\"rounds\":\(preCopyRounds),\"bytes\":\(preCopyBytes),\"seconds\":\(f(preCopySeconds))},"
            + "\"stop_copy\":{\"bytes\":\(stopCopyBytes),\"seconds\":\(f(stopCopySeconds)),\"remaining_at_stop\":\(remainingAtStop)},"
            + "\"total_bytes\":\(totalBytes),\"downtime_ms\":\(f(downtimeSeconds * 1000)),\"total_seconds\":\(f(totalSeconds)),"
            + "\"stop_copy_throughput_mib_s\":\(f(stopCopyThroughput / 1_048_576))}"
    }
}

/// Why a migration failed, and what was done about it.
public struct MigrationFailure: Error, CustomStringConvertible, Sendable {
    /// What was being done (`"setup"`, `"pre-copy"`, `"writing FILE"`, ...).
    public var phase: String
    /// The client error behind the failure, if a call failed.
    public var error: ClientError?
    /// Why, for people.
    public var reason: String
    /// The stream verdict when the destination refused the stream at the end of RESUMING.
    public var verdict: MigrationStreamVerdict?
    /// The source's state after recovery (RUNNING when it was put back), if it is a device.
    public var sourceState: MigrationState?
    /// The destination's state after recovery, if it is a device.
    public var destinationState: MigrationState?

    /// One line: the phase, the reason and where both ends were left.
    public var description: String {
        var s = "migration failed during \(phase): \(reason)"
        if let sourceState { s += "; source is \(sourceState)" }
        if let destinationState { s += "; destination is \(destinationState)" }
        return s
    }
}

/// Moves a device's state: pre-copy rounds while the source runs, until what is
/// left falls under `threshold` or `maxRounds` is reached; stop-copy; resume on the
/// destination. If anything fails, the source is returned to RUNNING.
public struct Migrator {
    /// Where the stream comes from.
    public var source: MigrationEndpoint
    /// Where the stream goes.
    public var destination: MigrationEndpoint
    /// Largest MIG_DATA_READ / WRITE (further limited by both servers' max_data_xfer_size).
    public var chunkSize = 1 << 20
    /// Most pre-copy rounds before stop-copy, whatever is left.
    public var maxRounds = 8
    /// Stop pre-copy once the source reports at most this many bytes left.
    public var threshold: UInt64 = 4 << 20
    /// Whether to run pre-copy at all (when the source offers it).
    public var preCopy = true
    /// After a save to a file, return the source to RUNNING (a snapshot) instead of leaving it stopped.
    public var resumeSourceAfterSave = false
    /// Called after each chunk, on the thread that runs `run()`.
    public var progress: ((MigrationProgress) -> Void)?
    /// Called after each pre-copy round (a VMM syncs dirty guest RAM here).
    public var afterPreCopyRound: ((Int) throws -> Void)?
    /// Called just before the source is stopped (a VMM pauses its vCPUs here).
    public var beforeStopCopy: (() throws -> Void)?
    /// Called once the source is stopped, before the destination resumes (the VMM's last RAM sync).
    public var whileStopped: (() throws -> Void)?
    /// Called once the destination accepted the stream (RESUMING → STOP), before it runs.
    public var beforeDestinationRuns: (() throws -> Void)?
    /// Test hook: may alter or drop each chunk on its way to the destination.
    public var transform: ((inout [UInt8]) -> Void)?
    /// Move the stop-copy stream straight from source to destination through a
    /// socketpair when both servers offer the "mig-data-fd" extension, instead of
    /// relaying every byte through this client (half the copies).
    public var directDataPath = true

    /// A migration from `source` to `destination` with the default settings; `run()` starts it.
    public init(source: MigrationEndpoint, destination: MigrationEndpoint) {
        self.source = source
        self.destination = destination
    }

    private static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    private func limit(_ c: VFIOUserClient) -> Int {
        min(chunkSize, c.serverCapabilities.effectiveMaxDataXferSize, c.capabilities.effectiveMaxDataXferSize)
    }

    /// Runs the migration. Throws `MigrationFailure` after recovering the source.
    @discardableResult
    public func run() throws(MigrationFailure) -> MigrationReport {
        var report = MigrationReport()
        let start = Self.now()
        var phase = "setup"
        var moved: UInt64 = 0
        var sink: Sink? = nil
        // Nothing has changed state yet: a refusal here leaves both ends as they were.
        let srcFile = try preflight()
        do {
            // Destination first: refuse early if it cannot take a stream at all.
            switch destination {
            case .device(let d):
                phase = "preparing the destination"
                try d.setMigrationState(.resuming)
                sink = .device(d, limit(d))
            case .file(let path):
                sink = .file(try MigrationFile.create(path))
            }
            var chunk = chunkSize
            if case .device(let d) = destination { chunk = min(chunk, limit(d)) }

            switch source {
            case .device(let s):
                chunk = min(chunk, limit(s))
                let flags = try s.migrationFlags()
                let state = try s.migrationState()
                guard state == .running || state == .stop else {
                    throw MigrationFailure(phase: "setup", error: nil, reason: "the source is in \(state), not RUNNING or STOP")
                }
                if preCopy && flags.contains(.preCopy) && state == .running && maxRounds > 0 {
                    phase = "pre-copy"
                    let t0 = Self.now()
                    try s.setMigrationState(.preCopy)
                    var round = 0
                    while round < maxRounds {
                        let info = try s.precopyInfo()
                        let left = info.initial + info.dirty
                        if round > 0 && left <= threshold { break }
                        var phaseBytes: UInt64 = 0
                        if useDirectPath(s), case .device(let d, _) = sink! {
                            // The round's data through a socketpair: the source writes what
                            // it has now, the destination reads to end of file.
                            phaseBytes = try direct(from: s, to: d, phase: "pre-copy")
                            moved += phaseBytes; report.preCopyBytes += phaseBytes
                            report.directDataPath = true
                            progress?(MigrationProgress(phase: .preCopy, round: round, bytes: moved, phaseBytes: report.preCopyBytes,
                                                        remaining: left > phaseBytes ? left - phaseBytes : 0, elapsed: Self.now() - start))
                        } else {
                            while true {
                                let c = try s.readMigrationChunk(max: chunk)
                                if c.isEmpty { break }
                                try sink!.write(c, transform)
                                moved += UInt64(c.count); phaseBytes += UInt64(c.count); report.preCopyBytes += UInt64(c.count)
                                progress?(MigrationProgress(phase: .preCopy, round: round, bytes: moved, phaseBytes: report.preCopyBytes,
                                                            remaining: left > phaseBytes ? left - phaseBytes : 0, elapsed: Self.now() - start))
                            }
                        }
                        round += 1
                        try afterPreCopyRound?(round)
                    }
                    report.preCopyRounds = round
                    let info = try s.precopyInfo()
                    report.remainingAtStop = info.initial + info.dirty
                    report.preCopySeconds = Self.now() - t0
                }
                phase = "stop-copy"
                let t1 = Self.now()
                let estimate = s.migrationDataSize()
                try beforeStopCopy?()
                try s.setMigrationState(.stopCopy)
                try whileStopped?()
                if useDirectPath(s), case .device(let d, _) = sink! {
                    report.stopCopyBytes = try direct(from: s, to: d, phase: "stop-copy")
                    report.directDataPath = true
                    moved += report.stopCopyBytes
                    // The direct path is seen only when it ends: one update per transfer.
                    progress?(MigrationProgress(phase: .stopCopy, round: 0, bytes: moved, phaseBytes: report.stopCopyBytes,
                                                remaining: 0, elapsed: Self.now() - start))
                } else {
                    report.stopCopyBytes = try pump(from: s, to: sink!, chunk: chunk, estimate: estimate, start: start, moved: &moved)
                }
                try s.setMigrationState(.stop)
                report.stopCopySeconds = Self.now() - t1
                try finishDestination(sink!, &phase)
                report.downtimeSeconds = Self.now() - t1
                if case .file = destination, resumeSourceAfterSave { try s.setMigrationState(.running) }
            case .file(let path):
                phase = "reading \(path)"
                let f = srcFile!
                let t1 = Self.now()
                let total = f.size
                while true {
                    let data = try f.read(max: chunk)
                    if data.isEmpty { break }
                    try sink!.write(MigrationChunk(data: data), transform)
                    moved += UInt64(data.count); report.stopCopyBytes += UInt64(data.count)
                    progress?(MigrationProgress(phase: .stopCopy, round: 0, bytes: moved, phaseBytes: moved,
                                                remaining: total > moved ? total - moved : 0, elapsed: Self.now() - start))
                }
                f.close()
                report.stopCopySeconds = Self.now() - t1
                try finishDestination(sink!, &phase)
                report.downtimeSeconds = Self.now() - t1
            }
        } catch {
            srcFile?.close()
            throw recover(phase: phase, error)
        }
        report.totalSeconds = Self.now() - start
        return report
    }

    /// The destination validates the stream on RESUMING → STOP, then runs.
    private func finishDestination(_ sink: Sink, _ phase: inout String) throws {
        switch sink {
        case .device(let d, _):
            phase = "resuming the destination"
            try d.setMigrationState(.stop)
            try beforeDestinationRuns?()
            phase = "starting the destination"
            try d.setMigrationState(.running)
        case .file(let f):
            phase = "writing the file"
            try f.sync()
            f.close()
        }
    }

    /// Stop-copy through a socketpair: the source writes the stream into one end while
    /// the destination reads the other. Our copies of both ends are closed once handed
    /// over, so the destination sees end of file exactly when the source is done.
    /// Whether the stream can go straight from the source to the destination
    /// (`mig-data-fd` on both, nothing to transform, a device on the other end).
    private func useDirectPath(_ s: VFIOUserClient) -> Bool {
        guard directDataPath, transform == nil, case .device(let d) = destination else { return false }
        return s.supportsMigrationDataFD && d.supportsMigrationDataFD
    }

    private func direct(from s: VFIOUserClient, to d: VFIOUserClient, phase: String) throws -> UInt64 {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw MigrationFailure(phase: phase, error: nil, reason: "socketpair failed: errno \(errno)")
        }
        let out = OwnedFD(fds[0]), into = OwnedFD(fds[1])
        // Deep socket buffers let the source run ahead of the destination instead of
        // waking it every few hundred KiB (the kernel caps them at net.core.*mem_max).
        var size: Int32 = 8 << 20
        for fd in [fds[0], fds[1]] {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        let sent = Completion<Result<UInt64, ClientError>>()
        spawnThread(name: "vfu-mig-direct") {
            let r = Result { () throws(ClientError) -> UInt64 in try s.transferMigrationStream(fd: out.rawValue, load: false) }
            out.close()   // the source is done: our copy must go too, or the destination never sees EOF
            sent.fulfil(r)
        }
        let received: Result<UInt64, ClientError> = Result { () throws(ClientError) -> UInt64 in
            try d.transferMigrationStream(fd: into.rawValue, load: true)
        }
        into.close()   // unblocks the source if the destination stopped reading early
        let bytesOut = try sent.wait().get()
        let bytesIn = try received.get()
        guard bytesOut == bytesIn else {
            throw MigrationFailure(phase: phase, error: nil, reason: "source sent \(bytesOut) bytes, destination read \(bytesIn)")
        }
        return bytesOut
    }

    /// Stop-copy: a reader thread pulls chunks from the source while this thread
    /// writes them to the destination, so the two hops overlap.
    private func pump(from s: VFIOUserClient, to sink: Sink, chunk: Int, estimate: UInt64?, start: Double,
                      moved: inout UInt64) throws -> UInt64 {
        let queue = ChunkQueue(depth: 4)
        spawnThread(name: "vfu-mig-read") {
            while true {
                do {
                    let c = try s.readMigrationChunk(max: chunk)
                    if c.isEmpty { queue.finish(nil); return }
                    if !queue.push(c) { return }   // the consumer gave up
                } catch {
                    queue.finish(error)
                    return
                }
            }
        }
        var bytes: UInt64 = 0
        do {
            while let c = try queue.pop() {
                try sink.write(c, transform)
                bytes += UInt64(c.count); moved += UInt64(c.count)
                progress?(MigrationProgress(phase: .stopCopy, round: 0, bytes: moved, phaseBytes: bytes,
                                            remaining: estimate.map { $0 > bytes ? $0 - bytes : 0 }, elapsed: Self.now() - start))
            }
        } catch {
            queue.cancel()
            queue.waitForProducer()
            throw error
        }
        queue.waitForProducer()
        return bytes
    }

    /// Puts the source back to RUNNING and describes the failure.
    private func recover(phase: String, _ error: any Error) -> MigrationFailure {
        if let f = error as? MigrationFailure { return annotate(f) }
        var f = MigrationFailure(phase: phase, error: error as? ClientError, reason: "\(error)")
        if let ce = error as? ClientError, let e = ce.errno, phase == "resuming the destination" {
            let v = MigrationStreamVerdict(e)
            f.verdict = v
            f.reason = "the destination refused the stream: \(v) (\(e))"
        }
        return annotate(f)
    }

    private func annotate(_ failure: MigrationFailure) -> MigrationFailure {
        var f = failure
        if case .device(let s) = source {
            if let state = try? s.migrationState() {
                switch state {
                case .running: break
                case .error: try? s.reset()  // only a reset leaves ERROR; the device restarts from power-on
                default: _ = try? s.setMigrationState(.running)
                }
            }
            f.sourceState = try? s.migrationState()
        }
        if case .device(let d) = destination { f.destinationState = try? d.migrationState() }
        return f
    }
}

private enum Sink {
    case device(VFIOUserClient, Int)
    case file(MigrationFile)

    func write(_ chunk: MigrationChunk, _ transform: ((inout [UInt8]) -> Void)?) throws {
        var c = chunk
        if let transform {
            var data = Array(chunk.data)
            transform(&data)
            if data.isEmpty { return }
            c = MigrationChunk(data: data)
        }
        switch self {
        case .device(let d, _): try d.writeMigrationChunk(c)
        case .file(let f): try f.write(c.data)
        }
    }
}

/// A bounded hand-over of chunks from the reader thread.
private final class ChunkQueue: @unchecked Sendable {
    // @unchecked: every field below is only touched with `lock` held.
    private let lock = ConditionLock()
    private var items: [MigrationChunk] = []
    private var done = false
    private var failure: (any Error)?
    private var cancelled = false
    private var producerDone = false
    private let depth: Int

    init(depth: Int) { self.depth = depth }

    func push(_ c: MigrationChunk) -> Bool {
        lock.withLock {
            while items.count >= depth && !cancelled { lock.wait() }
            if cancelled { producerDone = true; lock.broadcast(); return false }
            items.append(c)
            lock.broadcast()
            return true
        }
    }

    func finish(_ error: (any Error)?) {
        lock.withLock {
            done = true
            producerDone = true
            failure = error
            lock.broadcast()
        }
    }

    func pop() throws -> MigrationChunk? {
        lock.lock()
        defer { lock.unlock() }
        while items.isEmpty && !done { lock.wait() }
        if !items.isEmpty {
            let c = items.removeFirst()
            lock.broadcast()
            return c
        }
        if let failure { throw failure }
        return nil
    }

    func cancel() {
        lock.withLock {
            cancelled = true
            lock.broadcast()
        }
    }

    func waitForProducer() {
        lock.withLock { while !producerDone { lock.wait() } }
    }
}

/// A plain file for `--to-file` / `--from-file`.
final class MigrationFile: Sendable {
    let fd: Int32
    let path: String
    private let closed = Atomic<Bool>(false)

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    static func create(_ path: String) throws(MigrationFailure) -> MigrationFile {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MigrationFailure(phase: "setup", error: nil, reason: "cannot create \(path): \(String(cString: strerror(errno)))") }
        return MigrationFile(fd: fd, path: path)
    }

    static func open(_ path: String) throws(MigrationFailure) -> MigrationFile {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MigrationFailure(phase: "setup", error: nil, reason: "cannot open \(path): \(String(cString: strerror(errno)))") }
        return MigrationFile(fd: fd, path: path)
    }

    var size: UInt64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_size) : 0
    }

    func write(_ data: ArraySlice<UInt8>) throws(MigrationFailure) {
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw MigrationFailure(phase: "writing \(path)", error: nil, reason: String(cString: strerror(errno))) }
            done += n
        }
    }

    func read(max: Int) throws(MigrationFailure) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max)
        var got = 0
        while got < max {
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, max - got) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw MigrationFailure(phase: "reading \(path)", error: nil, reason: String(cString: strerror(errno))) }
            if n == 0 { break }
            got += n
        }
        out.removeLast(max - got)
        return out
    }

    func sync() throws(MigrationFailure) {
        guard fsync(fd) == 0 else { throw MigrationFailure(phase: "writing \(path)", error: nil, reason: String(cString: strerror(errno))) }
    }

    func close() {
        if !closed.exchange(true, ordering: .relaxed) { Glibc.close(fd) }
    }

    deinit { close() }
}
