import Glibc

/// The one lock that guards a device's whole model: config space, regions,
/// interrupts, DMA table and migration state.
///
/// Recursive on purpose: a variant's region handler runs under the lock and may
/// call any public API of the device (raise an interrupt, read DMA memory) without
/// knowing whether the caller already holds it. `suspend` lets a thread that waits
/// on another party (a DMA_READ reply from the client) step aside so the connection
/// threads can go on serving commands.
public final class DeviceLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    // Only touched while `mutex` is held by the owning thread.
    private var depth = 0

    public init() {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    @usableFromInline func lock() {
        pthread_mutex_lock(mutex)
        depth += 1
    }

    @usableFromInline func unlock() {
        depth -= 1
        pthread_mutex_unlock(mutex)
    }

    /// Releases every level this thread holds, runs `body`, and takes them back.
    /// The caller must hold the lock, or `body` simply runs.
    public func suspend<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        guard pthread_mutex_trylock(mutex) == 0 else { return try body() }  // held by another thread: we hold nothing
        // We now hold it one level more than `depth` (trylock does not count): release
        // all of them, so no level of ours stays held while `body` waits.
        let levels = depth
        for _ in 0...levels { pthread_mutex_unlock(mutex) }
        defer {
            for _ in 0..<levels { pthread_mutex_lock(mutex) }
            depth = levels
        }
        return try body()
    }
}
