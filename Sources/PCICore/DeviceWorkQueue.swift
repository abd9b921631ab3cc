import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// The device's own execution context: the work a device model starts from a
/// register access runs here, after that access has completed.
///
/// Real hardware answers an MMIO access at once and does what the access started
/// (DMA, then a completion interrupt) afterwards. A model that did its DMA inside
/// the region handler would hold back the reply the VMM waits for, and when the
/// VMM serves DMA through messages (guest RAM without an fd) its vCPU waits for
/// that reply while holding the lock its main loop needs to answer our DMA: both
/// sides then wait for ever. So models submit jobs; one OS thread per device runs
/// them in submission order, without the device lock held, and the connection
/// threads go on serving commands meanwhile.
///
/// A job belongs to the device state it was submitted in: a reset (DEVICE_RESET,
/// FLR, the owner leaving) cancels it. Its DMA then fails with ECANCELED and
/// ``DeviceJob/withDevice(_:)`` does not run, so a job never writes its results
/// into a device that was reset under it.
public final class DeviceWorkQueue: @unchecked Sendable {
    // @unchecked: every field below is only touched with `lock` (the queue's own) held.
    private let lock = ConditionLock()
    private var jobs: [(generation: UInt64, body: @Sendable (DeviceJob) -> Void)] = []
    private var head = 0
    private var running = false
    private var busy = false
    private var stopped = false
    /// A hung device (docs/control.md): jobs stay queued until released.
    private var held = false
    private var thread: pthread_t?
    private let name: String
    /// The device the jobs act on; weak so a queued job never keeps a device alive.
    weak var device: PCIDevice?

    init(name: String) { self.name = name }

    /// Queues `body` to run on the device's work thread (started on first use).
    /// Returns false, running nothing, once the queue has been stopped.
    @discardableResult
    func submit(generation: UInt64, _ body: @escaping @Sendable (DeviceJob) -> Void) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !stopped else { return false }
        jobs.append((generation, body))
        if !running {
            running = true
            // The thread holds the queue, never the device.
            thread = startThread(name: name) { [self] in loop() }
        }
        lock.signal()
        return true
    }

    private func loop() {
        while true {
            lock.lock()
            while (head == jobs.count || held) && !stopped {
                busy = false
                lock.broadcast()  // wakes `waitUntilIdle`
                lock.wait()
            }
            if stopped && head == jobs.count {
                busy = false
                lock.broadcast()
                lock.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head > 64 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            busy = true
            lock.unlock()
            // A job whose device is gone has nothing to act on.
            if let device {
                job.body(DeviceJob(device: device, generation: job.generation))
            }
        }
    }

    /// Holds queued jobs (true) or lets them run again (false): the engine of a device
    /// a control plane made hang. A held job a reset cancelled publishes nothing when
    /// it finally runs (``DeviceJob``).
    @_spi(Server) public func hold(_ on: Bool) {
        lock.lock()
        held = on
        lock.broadcast()
        lock.unlock()
    }

    /// Whether jobs are being held (``hold(_:)``).
    @_spi(Server) public var isHeld: Bool {
        lock.lock()
        defer { lock.unlock() }
        return held
    }

    /// Blocks until every job submitted so far has run (tests, orderly shutdown).
    /// Returns false after `timeoutMs`.
    @discardableResult
    public func waitUntilIdle(timeoutMs: Int = 5000) -> Bool {
        let deadline = monotonicMs() + timeoutMs
        lock.lock()
        defer { lock.unlock() }
        while head < jobs.count || busy {
            if !lock.wait(untilMonotonicMs: deadline) && monotonicMs() >= deadline { return false }
        }
        return true
    }

    /// Runs what is queued, refuses anything new, and joins the thread.
    func stop() {
        lock.lock()
        stopped = true
        let t = thread
        thread = nil
        lock.broadcast()
        lock.unlock()
        if let t, !pthread_equal(t, pthread_self()).isTrue { pthread_join(t, nil) }
    }
}

private extension Int32 {
    var isTrue: Bool { self != 0 }
}

/// What a job may do to its device. Every call checks that the device has not been
/// reset since the job was submitted; DMA re-checks after every wait on a client.
public struct DeviceJob: Sendable {
    /// The device the job was submitted to.
    public let device: PCIDevice
    /// The device's reset generation when the job was submitted.
    public let generation: UInt64

    /// Whether the device is still in the state the job was submitted in.
    public var isCurrent: Bool { device.resetGeneration == generation }

    /// Runs `body` under the device lock if the job is still current; nil otherwise.
    /// Keep DMA out of `body`: it is the place to publish results (status registers,
    /// counters) and raise the completion interrupt, atomically for the guest.
    public func withDevice<R, E: Error>(_ body: (PCIDevice) throws(E) -> R) throws(E) -> R? {
        try device.lock.withLock { () throws(E) -> R? in
            guard device.resetGeneration == generation else { return nil }
            return try body(device)
        }
    }

    /// Device-initiated read of client memory. EFAULT outside the owner's mappings,
    /// EPERM without Bus Master Enable, ECANCELED once the device was reset.
    public func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try device.lock.withLock { () throws(VFIOErrno) -> [UInt8] in
            try device.dma.read(address: address, count: count, generation: generation)
        }
    }

    /// Device-initiated write of client memory (logged for dirty-page tracking).
    public func dmaWrite<C: Collection>(address: UInt64, _ data: C) throws(VFIOErrno) where C.Element == UInt8 {
        try device.lock.withLock { () throws(VFIOErrno) in try device.dma.write(address: address, data, generation: generation) }
    }

    /// Raises the completion interrupt if the job is still current (see
    /// ``PCIDevice/raiseInterrupt(vector:)``).
    @discardableResult
    public func raiseInterrupt(vector: Int = 0) -> IRQIndex? {
        withDevice { $0.raiseInterrupt(vector: vector) } ?? nil
    }
}
