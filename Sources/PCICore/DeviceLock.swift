import Glibc
import Synchronization

/// The one lock that guards a device's whole model: config space, regions,
/// interrupts, DMA table, migration state and the variant's own registers.
///
/// Who takes it (docs/pci-core.md, "Who takes the device lock"): the doors into the
/// device (`PCIDevice`'s and `DeviceJob`'s methods, the core's own threads) take it;
/// everything behind them (config space, the interrupt controller, the DMA table, the
/// migration controller, region handlers, config hooks, reset hooks, migration
/// handlers, `DeviceGuarded` state) runs with it held and never takes it.
///
/// Recursive on purpose: a door called from a handler (a register write that raises
/// an interrupt) finds the lock already held and goes on. `suspend` lets a thread
/// that waits on another party (a DMA_READ reply from the client) step aside so the
/// connection threads can go on serving commands.
public final class DeviceLock: @unchecked Sendable {
    // @unchecked: the mutex's storage is heap-allocated (its address never moves);
    // `depth` is only touched by the thread holding it; `holder` is atomic.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var depth = 0
    /// The thread holding the lock (`pthread_self()` as a number), 0 when free: what
    /// `isHeldByCurrentThread` compares with.
    private let holder = Atomic<UInt>(0)

    /// A new, unheld recursive lock.
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

    /// Runs `body` with the lock held (taking it, or one more level of it).
    @inlinable
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    @usableFromInline func lock() {
        pthread_mutex_lock(mutex)
        if depth == 0 { holder.store(Self.currentThread, ordering: .relaxed) }
        depth += 1
    }

    @usableFromInline func unlock() {
        depth -= 1
        if depth == 0 { holder.store(0, ordering: .relaxed) }
        pthread_mutex_unlock(mutex)
    }

    /// Whether the calling thread holds the lock (for checks; another thread's answer
    /// may change at once).
    public var isHeldByCurrentThread: Bool { holder.load(ordering: .relaxed) == Self.currentThread }

    /// Traps in debug builds unless the calling thread holds the lock: the check the
    /// parts behind the doors make (release builds skip it).
    @inlinable
    public func assertHeld(_ what: @autoclosure () -> String = "", file: StaticString = #fileID, line: UInt = #line) {
        assert(isHeldByCurrentThread, "the device lock must be held\(what().isEmpty ? "" : ": " + what())", file: file, line: line)
    }

    private static var currentThread: UInt { UInt(pthread_self()) }

    /// Releases every level this thread holds, runs `body`, and takes them back.
    /// The caller must hold the lock, or `body` simply runs.
    public func suspend<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        guard pthread_mutex_trylock(mutex) == 0 else { return try body() }  // held by another thread: we hold nothing
        // We now hold it one level more than `depth` (trylock does not count): release
        // all of them, so no level of ours stays held while `body` waits.
        let levels = depth
        if levels > 0 { holder.store(0, ordering: .relaxed) }
        depth = 0
        for _ in 0...levels { pthread_mutex_unlock(mutex) }
        defer {
            for _ in 0..<levels { pthread_mutex_lock(mutex) }
            depth = levels
            if levels > 0 { holder.store(Self.currentThread, ordering: .relaxed) }
        }
        return try body()
    }
}

/// Device-model state that only code holding the device lock may touch: the box a
/// model keeps its registers and bookkeeping in, in place of marking the whole model
/// `@unchecked Sendable`.
///
/// Handlers, hooks and `DeviceJob.withDevice` bodies already hold the lock and use
/// `value` directly (checked in debug builds); code outside them goes through
/// `withLock`, which takes it.
public final class DeviceGuarded<State>: @unchecked Sendable {
    // @unchecked: `state` is only read or written with `lock` held (checked in debug
    // builds by `value`, taken by `withLock`).
    private let lock: DeviceLock
    private var state: State

    /// Guards `initial` with `lock` (a device's `lock`).
    public init(_ initial: State, lock: DeviceLock) {
        self.lock = lock
        state = initial
    }

    /// The state, for code that holds the device lock (a handler, a hook, a job's
    /// `withDevice`). Traps in debug builds when the lock is not held.
    public var value: State {
        _read {
            lock.assertHeld("DeviceGuarded.value")
            yield state
        }
        _modify {
            lock.assertHeld("DeviceGuarded.value")
            yield &state
        }
    }

    /// Takes the device lock and runs `body` on the state: for code outside a handler.
    public func withLock<R, E: Error>(_ body: (inout State) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try body(&state) }
    }
}
