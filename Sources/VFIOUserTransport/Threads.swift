import Glibc

/// The signals a process-wide handler waits for (`vfu serve` stops on SIGINT and
/// SIGTERM). Every thread this package starts has them blocked, so that they reach
/// the one thread that waits for them with `sigwait` instead of killing the process.
public let processStopSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

/// A signal set holding `processStopSignals`.
public func stopSignalSet() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for s in processStopSignals { sigaddset(&set, s) }
    return set
}

/// Starts a detached OS thread running `body`.
///
/// Blocking socket I/O lives on its own OS thread, one per connection: on a
/// 2-core machine two Tasks blocked in read() would stall the cooperative pool
/// (swift-on-linux.md). Must be called from nonisolated code. The thread starts
/// with the stop signals blocked, whatever the caller's mask.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let tid = startThread(name: name, body)
    pthread_detach(tid)
}

/// Starts a joinable OS thread running `body` (join it with `pthread_join`), with
/// the stop signals blocked.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) {
            self.body = body
            self.name = name
        }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var tid = pthread_t()
    // The new thread inherits the creator's mask: block first, so no signal can
    // land on the new thread before it runs, then restore ours.
    var block = stopSignalSet(), saved = sigset_t()
    pthread_sigmask(SIG_BLOCK, &block, &saved)
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        setCurrentThreadName(b.name)
        b.body()
        return nil
    }, box)
    pthread_sigmask(SIG_SETMASK, &saved, nil)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return tid
}

/// A one-shot hand-over of a value between threads, with a timeout.
public final class Completion<Value: Sendable>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `lock` held (waiting needs the condition
    // variable, which `Locked` does not have).
    private let lock = ConditionLock()
    private var value: Value?

    /// An empty hand-over; the first `fulfil` fills it.
    public init() {}

    /// Hands over `v`; the first value wins.
    public func fulfil(_ v: Value) {
        lock.withLock {
            if value == nil { value = v }
            lock.broadcast()
        }
    }

    /// The value, or nil after `timeoutMs`.
    public func wait(timeoutMs: Int) -> Value? {
        let deadline = monotonicMs() + timeoutMs
        return lock.withLock {
            while value == nil {
                if !lock.wait(untilMonotonicMs: deadline) { break }
            }
            return value
        }
    }

    /// The value, however long it takes.
    public func wait() -> Value {
        lock.withLock {
            while value == nil { lock.wait() }
            return value!
        }
    }
}

/// Milliseconds on the monotonic clock, for deadlines.
public func monotonicMs() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// Sleeps the calling thread for `ms` milliseconds.
public func sleepMs(_ ms: Int) {
    var want = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    var left = timespec()
    while nanosleep(&want, &left) != 0 && errno == EINTR { want = left }
}
