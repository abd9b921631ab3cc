import Glibc

/// A value guarded by a pthread mutex whose storage never moves.
///
/// In place of the Synchronization module's `Mutex` wherever threads share state:
/// on Linux `Mutex` waits on raw futexes, which ThreadSanitizer cannot see, so every
/// access it guards is reported as a race and a TSan run says nothing useful. A
/// pthread mutex is understood by TSan and costs the same when uncontended.
public final class Locked<Value: Sendable>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    /// Guards `value`.
    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` on the value with the mutex held.
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
