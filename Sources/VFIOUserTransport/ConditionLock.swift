import Glibc

/// A mutex with a condition variable, for threads that wait for each other.
///
/// The pthread objects are allocated once and never move: a `pthread_mutex_t`
/// stored inline in a Swift class and passed as `&m` has no address Swift
/// guarantees to be stable. The condition variable waits on CLOCK_MONOTONIC, so
/// timed waits are immune to wall-clock changes. For plain mutual exclusion
/// without waiting, prefer the Synchronization module's `Mutex`.
public final class ConditionLock: @unchecked Sendable {
    // @unchecked: the pthread objects are the synchronization; they are only
    // touched through pthread calls.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    /// A mutex and a condition variable waiting on CLOCK_MONOTONIC.
    public init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Takes the mutex; pair with `unlock()` (prefer `withLock`).
    public func lock() { pthread_mutex_lock(mutex) }
    /// Releases the mutex taken with `lock()`.
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` with the mutex held.
    @inlinable
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits for a signal; the caller holds the mutex (it is released while waiting).
    public func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits for a signal until `deadlineMs` on the monotonic clock (`monotonicMs()`);
    /// false once the deadline has passed. The caller holds the mutex.
    @discardableResult
    public func wait(untilMonotonicMs deadlineMs: Int) -> Bool {
        guard deadlineMs > monotonicMs() else { return false }
        var ts = timespec(tv_sec: deadlineMs / 1000, tv_nsec: (deadlineMs % 1000) * 1_000_000)
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    /// Wakes every waiter (call with the mutex held).
    public func broadcast() { pthread_cond_broadcast(cond) }
    /// Wakes one waiter (call with the mutex held).
    public func signal() { pthread_cond_signal(cond) }
}
