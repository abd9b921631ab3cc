import Glibc
import VFIOUserTransport

/// The server under test, run by the suite (`--server-cmd 'CMD {sock}'`), so that a
/// server that takes one client at a time, or exits when a client leaves or misbehaves,
/// is relaunched whenever a check needs a fresh one, and how it ended is on record.
///
/// The command runs under `/bin/sh -c "exec CMD"` in a process group of its own, with
/// `{sock}` replaced by a fresh socket path for every launch (a stale socket file from
/// the previous launch can then never be mistaken for a listening server).
final class ServerProcess {
    /// How a launch of the server ended.
    enum Status: Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)
        /// Still running when the suite stopped it (SIGTERM, then SIGKILL).
        case stoppedBySuite

        var description: String {
            switch self {
            case .exited(let c): return "exited with status \(c)"
            case .signaled(let s): return "killed by signal \(s) (\(signalName(s)))"
            case .stoppedBySuite: return "stopped by the suite"
            }
        }
        /// A death by signal the suite did not send: a crash.
        var isCrash: Bool { if case .signaled = self { return true }; return false }
    }

    /// One launch's end, and the check that was running when it was seen.
    struct Ending { var launch: Int; var during: String; var status: Status }

    let template: String
    let directory: String
    let launchTimeoutMs: Int
    private(set) var pid: pid_t = 0
    private(set) var socketPath = ""
    private(set) var launches = 0
    private(set) var endings: [Ending] = []
    /// Launches in a row that made no socket: after two the suite stops trying, so a
    /// server that never comes up costs two launch timeouts, not one per check.
    private var failedLaunches = 0
    /// The server's stdout and stderr, all launches appended.
    let logPath: String
    private let keepLog: Bool

    /// `logPath` nil: a temporary file, removed at the end.
    init(template: String, launchTimeoutMs: Int, logPath: String? = nil) {
        self.template = template
        self.launchTimeoutMs = launchTimeoutMs
        var t = Array("/tmp/vfu-conform-XXXXXX".utf8CString)
        directory = t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        self.logPath = logPath ?? directory + "/server.log"
        keepLog = logPath != nil
        if keepLog { unlink(self.logPath) }
    }

    deinit {
        if pid > 0 { stop(during: "end of run") }
        if !keepLog { unlink(logPath) }
        unlink(socketPath)
        rmdir(directory)
    }

    /// True while the launched process has not ended (reaps it if it has).
    var isRunning: Bool { pid > 0 && reap(during: "") == nil }

    /// Starts the server and waits until its socket exists; false if it does not
    /// appear within the launch timeout or the process ends first.
    @discardableResult
    func launch(during check: String) -> Bool {
        if pid > 0 { stop(during: check) }
        guard failedLaunches < 2 else { return false }
        failedLaunches += 1
        if !socketPath.isEmpty { unlink(socketPath) }
        launches += 1
        socketPath = "\(directory)/s\(launches).sock"
        let command = "exec " + template.replacing("{sock}", with: socketPath)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attr, 0)
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none); sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        let args: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { s in s.withCString { strdup($0) } }
        defer { args.forEach { free($0) } }
        var argv = args + [nil]
        var child: pid_t = 0
        guard posix_spawn(&child, "/bin/sh", &actions, &attr, &argv, environ) == 0 else { return false }
        pid = child
        let deadline = monotonicMs() + launchTimeoutMs
        while monotonicMs() < deadline {
            var st = stat()
            if stat(socketPath, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { failedLaunches = 0; return true }
            guard reap(during: check) == nil else { return false }
            _ = poll(nil, 0, 10)
        }
        return false
    }

    /// How the process ended, if it has (recorded once, against `check`).
    @discardableResult
    func reap(during check: String) -> Status? {
        guard pid > 0 else { return endings.last?.status }
        var st: Int32 = 0
        guard waitpid(pid, &st, WNOHANG) == pid else { return nil }
        let status: Status = st & 0x7F == 0 ? .exited((st >> 8) & 0xFF) : .signaled(st & 0x7F)
        endings.append(Ending(launch: launches, during: check, status: status))
        pid = 0
        return status
    }

    /// Waits up to `ms` for the process to end by itself.
    func waitForExit(ms: Int, during check: String) -> Status? {
        let deadline = monotonicMs() + ms
        repeat {
            if let s = reap(during: check) { return s }
            _ = poll(nil, 0, 10)
        } while monotonicMs() < deadline
        return nil
    }

    /// Ends the process group: SIGTERM, then SIGKILL after a second.
    func stop(during check: String) {
        guard pid > 0, reap(during: check) == nil else { return }
        let group = pid
        kill(-group, SIGTERM)
        if waitForExit(ms: 1000, during: check) == nil {
            kill(-group, SIGKILL)
            var st: Int32 = 0
            _ = waitpid(group, &st, 0)
            pid = 0
            endings.append(Ending(launch: launches, during: check, status: .stoppedBySuite))
            return
        }
        // It ended on our SIGTERM: that is not a crash of its own.
        if let last = endings.last, last.status == .signaled(SIGTERM) {
            endings[endings.count - 1].status = .stoppedBySuite
        }
    }

    /// The last lines the server printed, for a failure's detail.
    func logTail(_ lines: Int = 2) -> String {
        guard let f = fopen(logPath, "r") else { return "" }
        defer { fclose(f) }
        var all: [String] = []
        var buf = [CChar](repeating: 0, count: 512)
        while fgets(&buf, Int32(buf.count), f) != nil {
            let line = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            all.append(line.trimmingSuffixNewline)
            if all.count > 64 { all.removeFirst() }
        }
        return all.suffix(lines).joined(separator: " | ")
    }
}

func signalName(_ s: Int32) -> String {
    switch s {
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGBUS: return "SIGBUS"
    case SIGILL: return "SIGILL"
    case SIGFPE: return "SIGFPE"
    case SIGKILL: return "SIGKILL"
    case SIGTERM: return "SIGTERM"
    case SIGPIPE: return "SIGPIPE"
    case SIGTRAP: return "SIGTRAP"
    default: return "signal \(s)"
    }
}

extension String {
    var trimmingSuffixNewline: String {
        var s = self
        while s.last == "\n" || s.last == "\r" { s.removeLast() }
        return s
    }
}
