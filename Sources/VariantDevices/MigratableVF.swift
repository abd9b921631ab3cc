import MigrationStream
import DeviceSpecs
import Glibc
import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// The device model: registers, a descriptor-ring engine (MigratableVFEngine.swift), the
/// RAM BAR, and the migration handler that streams all of it.
///
/// Registers (32-bit, from `registersOffset`): 0x00 MAGIC "MVF1", 0x04 VERSION,
/// 0x08 CONTROL (bit 0 ENABLE, bit 1 IRQ_ENABLE), 0x0C STATUS, 0x10/0x14 RING_BASE,
/// 0x18 RING_SIZE (entries, power of two ≤ 4096), 0x1C RING_TAIL (producer index,
/// free-running), 0x20 RING_HEAD (consumer index, RO), 0x24 IRQ_VECTOR,
/// 0x28 COMPLETIONS, 0x2C ERRORS, 0x30 IRQ_COUNT, 0x34 SCRATCH, 0x38/0x3C BYTES,
/// 0x40 TICKS, 0x44/0x48 DIGEST (running XXH64 of every result). RO unless named.
///
/// Descriptor (32 bytes at RING_BASE + 32 × (index mod RING_SIZE)): op u32, len u32,
/// src u64, dst u64, cookie u32, status u32 (written by the device: 1 done, else
/// 0x100 | errno). Ops: 1 HASH (XXH64 of len bytes at src, seeded with cookie →
/// 16 bytes {cookie, hash} at dst), 2 STORE (len bytes at src → RAM BAR at dst),
/// 3 LOAD (RAM BAR at src → len bytes at dst).
public final class MigratableVF: RegionAccessHandler, MigrationHandler, MigrationStreamConsumer, Sendable {
    /// Bytes of register space the model claims.
    public static let registerBlockSize: UInt64 = 0x100
    /// MAGIC: "MVF1".
    public static let magic: UInt32 = 0x3146_564D
    /// VERSION: 1.0.
    public static let version: UInt32 = 0x0001_0000
    /// Largest RAM BAR.
    public static let maxRAM: UInt64 = 1 << 30
    /// Bytes per ring descriptor.
    public static let descriptorSize = 32
    /// Longest transfer one descriptor may ask for (E2BIG above).
    public static let maxTransfer = 1 << 20

    /// Register offsets from `registersOffset`.
    public enum Register: Int {
        /// MAGIC "MVF1" (RO).
        case magic = 0x00
        /// VERSION (RO).
        case version = 0x04
        /// CONTROL: ENABLE, IRQ_ENABLE.
        case control = 0x08
        /// STATUS (RO).
        case status = 0x0C
        /// RING_BASE, low dword.
        case ringLow = 0x10
        /// RING_BASE, high dword.
        case ringHigh = 0x14
        /// RING_SIZE: entries, a power of two up to 4096.
        case ringSize = 0x18
        /// RING_TAIL: the guest's producer index (free-running).
        case ringTail = 0x1C
        /// RING_HEAD: the engine's consumer index (RO).
        case ringHead = 0x20
        /// IRQ_VECTOR: raised after a batch.
        case irqVector = 0x24
        /// COMPLETIONS: descriptors done (RO).
        case completions = 0x28
        /// ERRORS: descriptors failed (RO).
        case errors = 0x2C
        /// IRQ_COUNT: interrupts raised (RO).
        case irqCount = 0x30
        /// SCRATCH: any value, read back.
        case scratch = 0x34
        /// BYTES processed, low dword (RO).
        case bytesLow = 0x38
        /// BYTES processed, high dword (RO).
        case bytesHigh = 0x3C
        /// TICKS: looks at the ring (RO).
        case ticks = 0x40
        /// DIGEST (running XXH64 of results), low dword (RO).
        case digestLow = 0x44
        /// DIGEST, high dword (RO).
        case digestHigh = 0x48
    }

    /// Descriptor operations.
    public enum Op: UInt32 {
        /// XXH64 of len bytes at src (seeded with cookie) → {cookie, hash} at dst.
        case hash = 1
        /// len bytes at src → the RAM BAR at dst.
        case store = 2
        /// The RAM BAR at src → len bytes at dst.
        case load = 3
    }
    /// CONTROL bit 0: the engine takes descriptors.
    public static let controlEnable: UInt32 = 1
    /// CONTROL bit 1: interrupt after a batch.
    public static let controlIRQ: UInt32 = 2

    unowned let device: PCIDevice
    /// What the spec's `migration` section said.
    public let options: MigratableVFOptions
    /// The device kind named in the stream (a destination must be the same kind).
    public let kind: String
    /// The RAM BAR's memory.
    public let ram: SharedMemory
    /// The stream's dirty-tracking page size.
    public let pageSize = 4096
    var pageCount: Int { ram.size / pageSize }

    /// What the model changes, guarded by the device lock (handlers, hooks, the
    /// migration handler and jobs' `withDevice` hold it).
    struct State {
        var regs = [UInt32](repeating: 0, count: Int(registerBlockSize / 4))
        /// Bumped whenever the device stops running or resets: an engine step that waited
        /// for the client (message DMA releases the lock) and sees a new epoch abandons
        /// its descriptor without changing any state.
        var epoch: UInt64 = 0
        var save: SaveSession?
        var loader: MigrationStreamLoader?
        var stagedCore: [UInt8]?
        var stagedDevice: [UInt8]?
        var failure: String?
        /// A look at the ring is queued as a device job (coalesces kicks).
        var lookQueued = false
        /// Set by `stopEngine`: no more looks are queued.
        var engineStopped = false
    }
    let state: DeviceGuarded<State>

    // Shorthands for the guarded fields (each checks the lock is held, in debug builds).
    private var regs: [UInt32] { _read { yield state.value.regs } _modify { yield &state.value.regs } }
    var epoch: UInt64 { _read { yield state.value.epoch } _modify { yield &state.value.epoch } }
    private var save: SaveSession? { _read { yield state.value.save } _modify { yield &state.value.save } }
    private var loader: MigrationStreamLoader? { _read { yield state.value.loader } _modify { yield &state.value.loader } }
    private var stagedCore: [UInt8]? { _read { yield state.value.stagedCore } _modify { yield &state.value.stagedCore } }
    private var stagedDevice: [UInt8]? { _read { yield state.value.stagedDevice } _modify { yield &state.value.stagedDevice } }
    private var failure: String? { _read { yield state.value.failure } _modify { yield &state.value.failure } }
    var lookQueued: Bool { _read { yield state.value.lookQueued } _modify { yield &state.value.lookQueued } }
    var engineStopped: Bool { _read { yield state.value.engineStopped } _modify { yield &state.value.engineStopped } }

    /// Builds the model on `device` and attaches its migration controller.
    public static func attach(to device: PCIDevice, options: MigratableVFOptions, kind: String = "migratable-vf") throws(SpecError) -> MigratableVF {
        guard let ram = device.memory(ofBAR: options.ramBAR) else {
            throw SpecError(file: device.configuration.name, field: "migration.ramBar", reason: "BAR\(options.ramBAR) has no RAM")
        }
        let model = MigratableVF(device: device, options: options, kind: kind, ram: ram)
        let r = options.registersOffset
        do { try device.mapRegisters(bar: options.registersBAR, range: r..<(r + registerBlockSize), handler: model) } catch {
            throw SpecError(file: device.configuration.name, field: "migration.registersOffset",
                            reason: "the register block overlaps another register range in BAR\(options.registersBAR) (\(error))")
        }
        if options.enabled {
            device.migration = MigrationController(handler: model, preCopy: options.preCopy, p2p: options.p2p)
        }
        device.onReset { [weak model] _ in model?.resetRegisters() }
        return model
    }

    init(device: PCIDevice, options: MigratableVFOptions, kind: String, ram: SharedMemory) {
        self.device = device
        self.options = options
        self.kind = kind
        self.ram = ram
        state = DeviceGuarded(State(), lock: device.lock)
        resetRegisters()
    }

    /// Stops the engine: the ring is no longer looked at (jobs end with the device).
    public func stopEngine() { device.lock.withLock { engineStopped = true } }

    private func resetRegisters() {
        device.lock.withLock {
            regs = [UInt32](repeating: 0, count: Int(Self.registerBlockSize / 4))
            regs[0] = Self.magic
            regs[1] = Self.version
            epoch &+= 1
            // A queued look was cancelled by the reset (DeviceJob): the next kick queues anew.
            lookQueued = false
        }
    }

    func reg(_ r: Register) -> UInt32 { regs[r.rawValue / 4] }
    func set(_ r: Register, _ v: UInt32) { regs[r.rawValue / 4] = v }

    /// A copy of the registers (tests compare source and destination).
    public var registers: [UInt32] { device.lock.withLock { regs } }
    /// Register `r` (tests).
    public func register(_ r: Register) -> UInt32 { device.lock.withLock { reg(r) } }

    /// XXH3 of the whole RAM BAR.
    public func ramDigest() -> UInt64 {
        device.lock.withLock { XXH3.hash(UnsafeRawBufferPointer(start: ram.mapping.base, count: ram.size)) }
    }

    // MARK: Registers

    /// Reads the register block.
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(Self.registerBlockSize))
        for (i, v) in regs.enumerated() { bytes.setLE32(v, at: i * 4) }
        return Array(bytes[Int(offset)..<(Int(offset) + count)])
    }

    /// Writes writable registers; a RING_TAIL or CONTROL write kicks the engine. EBUSY while the state is being read out or replaced.
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        // The state is being read out or replaced: a write now would be lost or
        // clobbered, so it is refused (config space and MSI-X stay accessible).
        if let s = device.migration?.state, s == .stopCopy || s == .resuming { throw .EBUSY }
        var pos = Int(offset)
        var it = data.makeIterator()
        let end = Int(offset) + data.count
        while pos < end {
            let d = pos & ~3
            var b = [UInt8](repeating: 0, count: 4)
            b.setLE32(regs[d / 4], at: 0)
            while pos < d + 4 && pos < end, let x = it.next() { b[pos - d] = x; pos += 1 }
            guard let r = Register(rawValue: d) else { continue }
            switch r {
            case .control, .ringLow, .ringHigh, .ringSize, .ringTail, .irqVector, .scratch: set(r, b.le32(at: 0))
            default: break
            }
            if r == .control || r == .ringTail { kick() }
        }
    }

    // MARK: MigrationHandler

    /// Why the last arc failed.
    public var failureReason: String? { failure }

    /// Starts, finishes or drops save and load sessions as the arc requires.
    public func transition(from: MigrationState, to: MigrationState) throws(VFIOErrno) {
        failure = nil
        let wasRunning = from == .running || from == .preCopy
        let nowRunning = to == .running || to == .preCopy
        if wasRunning && !nowRunning { epoch &+= 1 }
        switch (from, to) {
        case (.running, .preCopy), (.runningP2P, .preCopyP2P):
            save = SaveSession(model: self, preCopy: true)
        case (.preCopy, .running), (.preCopyP2P, .runningP2P), (.stopCopy, .stop):
            save = nil
        case (.preCopy, .preCopyP2P), (.preCopyP2P, .preCopy):
            break
        case (.preCopy, .stopCopy), (.preCopyP2P, .stopCopy):
            guard let s = save else { failure = "no save session to finish"; throw .EIO }
            s.finalize(core: device.saveCoreState(), state: deviceState())
        case (.stop, .stopCopy):
            let s = SaveSession(model: self, preCopy: false)
            s.finalize(core: device.saveCoreState(), state: deviceState())
            save = s
        case (.stop, .resuming):
            save = nil
            stagedCore = nil
            stagedDevice = nil
            loader = MigrationStreamLoader(consumer: self)
        case (.resuming, .stop):
            try finishLoad()
        case (.running, .runningP2P), (.runningP2P, .running), (.runningP2P, .stop), (.stop, .runningP2P),
             (.running, .stop), (.stop, .running):
            break
        default:
            failure = "unsupported arc \(from)→\(to)"
            throw .EINVAL
        }
    }

    /// Back in RUNNING or PRE_COPY: the engine looks at the ring again.
    public func didEnter(_ state: MigrationState) {
        // Descriptors posted while stopped (or carried in a loaded state) run now. (The
        // core has already delivered interrupts that became pending while stopped.)
        if state == .running || state == .preCopy { kick() }
    }

    /// Drops any save or load session.
    public func deviceReset() {
        save = nil
        loader = nil
        stagedCore = nil
        stagedDevice = nil
        failure = nil
    }

    /// Copies the next stream bytes out.
    public func readStateData(into out: inout [UInt8], max: Int) throws(VFIOErrno) {
        guard let save else { throw .EINVAL }
        save.read(into: &out, max: max)
    }

    /// Hands the next stream bytes out in pieces (RAM pages by reference).
    public func readStateData(max: Int, to sink: (MigrationDataPiece) -> Bool) throws(VFIOErrno) -> Int {
        guard let save else { throw .EINVAL }
        return save.produce(max: max, sink)
    }

    /// Feeds incoming stream bytes to the loader.
    public func writeStateData(_ data: ArraySlice<UInt8>) throws(VFIOErrno) {
        guard let loader else { throw .EINVAL }
        loader.write(data)
    }

    /// Where the loader wants the next RAM bytes read straight in.
    public func directWriteTarget(max: Int) -> UnsafeMutableRawBufferPointer? { loader?.directTarget(max: max) }

    /// The loader's limit for bytes through `writeStateData`.
    public func indirectWriteLimit() -> Int? { loader?.indirectReadLimit }

    /// Bytes were read into the last direct target.
    public func directWriteCommitted(_ bytes: UnsafeRawBufferPointer) throws(VFIOErrno) {
        guard let loader else { throw .EINVAL }
        loader.commitDirect(bytes)
    }

    /// RAM bytes [offset, offset + length) for the loader, or nil outside the BAR.
    public func ramBuffer(offset: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0, offset <= UInt64(ram.size), UInt64(length) <= UInt64(ram.size) - offset else { return nil }
        return UnsafeMutableRawBufferPointer(start: ram.mapping.base + Int(offset), count: length)
    }

    /// The save session's initial and dirty bytes (PRE_COPY info).
    public func pendingBytes() -> (initial: UInt64, dirty: UInt64) {
        guard let save else { return (0, 0) }
        return save.pending(rescan: true)
    }

    /// The STOP_COPY stream length, estimated.
    public func stopCopySize() -> UInt64 {
        let stateBytes = UInt64(device.saveCoreState().count + 4 * regs.count + 512)
        guard let save else { return UInt64(ram.size) + UInt64(pageCount / 256 + 1) * 40 + stateBytes }
        let p = save.pending(rescan: false)
        return p.initial + p.dirty + stateBytes
    }

    // MARK: State blobs

    /// BEGIN payload: format version, device kind and identity, RAM size, layout.
    func beginPayload() -> [UInt8] {
        var w = WireWriter(capacity: 64)
        w.u16(MigrationRecord.formatMajor); w.u16(MigrationRecord.formatMinor)
        let k = Array(kind.utf8)
        w.u16(UInt16(k.count)); w.append(k)
        let id = device.configuration.identity
        w.u16(id.vendor); w.u16(id.device); w.u16(id.subsystemVendor); w.u16(id.subsystem)
        w.u64(UInt64(ram.size))
        w.u32(UInt32(pageSize))
        w.u32(UInt32(regs.count))
        return w.bytes
    }

    func deviceState() -> [UInt8] {
        var w = WireWriter(capacity: 4 + 4 * regs.count)
        w.u32(UInt32(regs.count))
        for r in regs { w.u32(r) }
        return w.bytes
    }

    /// Checks a stream's BEGIN record against this device (kind, identity, RAM layout).
    public func begin(_ payload: [UInt8]) -> MigrationStreamError? {
        var r = WireReader(payload)
        guard let major = try? r.u16(), let minor = try? r.u16() else { return MigrationStreamError(.EBADMSG, "BEGIN record too short") }
        guard major == MigrationRecord.formatMajor else {
            return MigrationStreamError(.EPROTO, "stream format \(major).\(minor) is not supported (this device reads \(MigrationRecord.formatMajor).x)")
        }
        guard let n = try? r.u16(), let k = try? r.bytes(Int(n)), let v = try? r.u16(), let d = try? r.u16(),
              let sv = try? r.u16(), let ss = try? r.u16(), let size = try? r.u64(), let ps = try? r.u32(),
              let nr = try? r.u32() else { return MigrationStreamError(.EBADMSG, "BEGIN record too short") }
        let theirs = String(decoding: k, as: UTF8.self)
        let id = device.configuration.identity
        func hex(_ x: UInt16) -> String { String(x, radix: 16) }
        guard theirs == kind, v == id.vendor, d == id.device, sv == id.subsystemVendor, ss == id.subsystem else {
            return MigrationStreamError(.ENODEV, "stream is from a \(theirs) \(hex(v)):\(hex(d)) (sub \(hex(sv)):\(hex(ss))); this device is a \(kind) \(hex(id.vendor)):\(hex(id.device)) (sub \(hex(id.subsystemVendor)):\(hex(id.subsystem)))")
        }
        guard size == UInt64(ram.size), ps == UInt32(pageSize), nr == UInt32(regs.count) else {
            return MigrationStreamError(.ENODEV, "stream is from a device with \(size) bytes of RAM; this one has \(ram.size)")
        }
        return nil
    }

    /// Whether a RAM record fits the BAR.
    public func ramRangeValid(offset: UInt64, length: UInt64) -> Bool {
        offset <= UInt64(ram.size) && length <= UInt64(ram.size) - offset
    }

    /// Stores a RAM record.
    public func ram(offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> MigrationStreamError? {
        guard ram.mapping.write(at: offset, from: bytes) else {
            return MigrationStreamError(.EBADMSG, "RAM data outside the device's RAM")
        }
        return nil
    }

    /// Stages the core and device state records (applied when loading ends).
    public func record(_ tag: MigrationRecord.Tag, _ payload: [UInt8]) -> MigrationStreamError? {
        switch tag {
        case .core:
            if let why = device.coreStateMismatch(payload) { return MigrationStreamError(.ENODEV, "stream is from another device: \(why)") }
            stagedCore = payload
        case .device:
            guard payload.count == 4 + 4 * regs.count, payload.le32(at: 0) == UInt32(regs.count) else {
                return MigrationStreamError(.EBADMSG, "device state record has the wrong size")
            }
            stagedDevice = payload
        default:
            break
        }
        return nil
    }

    /// RESUMING → STOP: the stream must be complete and valid; only then are the
    /// registers and config space replaced. A refused stream leaves registers and
    /// config as they were and the RAM BAR zeroed (it was partly overwritten), and
    /// the controller moves to ERROR.
    private func finishLoad() throws(VFIOErrno) {
        defer { loader = nil }
        guard let loader else { failure = "no load session"; throw .EINVAL }
        if let e = loader.finish() {
            failure = e.reason
            abandonLoad()
            throw e.errno
        }
        guard let core = stagedCore, let state = stagedDevice else {
            failure = "stream has no device state"
            abandonLoad()
            throw .EBADMSG
        }
        device.loadCoreState(core)
        for i in regs.indices { regs[i] = state.le32(at: 4 + 4 * i) }
        stagedCore = nil
        stagedDevice = nil
    }

    private func abandonLoad() {
        ram.clear()
        stagedCore = nil
        stagedDevice = nil
    }

    /// Loader state, for tests: the reason the current or last load failed.
    public var loadError: MigrationStreamError? { device.lock.withLock { loader?.error } }
}
