import DeviceSpecs
import Glibc
import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// Options of the `migration` spec section (docs/migration.md).
public struct MigratableVFOptions: Sendable, Equatable {
    /// The register-backed BAR holding the 256-byte register block, and where.
    public var registersBAR = 0
    public var registersOffset: UInt64 = 0
    /// The RAM-backed BAR that is the device's memory (up to 1 GiB).
    public var ramBAR = 2
    public var preCopy = true
    public var p2p = true
    /// false: the device offers no migration at all (features answer EINVAL).
    public var enabled = true
    /// Accepted for older specs; the engine is event-driven now (it runs as device
    /// jobs when the guest writes RING_TAIL or CONTROL, and when the device resumes).
    public var workerIntervalMs = 1
    /// Descriptors processed per look.
    public var batch = 32

    public init() {}

    static let keys: Set<String> = ["registersBar", "registersOffset", "ramBar", "preCopy", "p2p", "enabled",
                                    "workerIntervalMs", "batch"]

    /// Parses and checks the section against the spec's BARs.
    public static func parse(_ spec: DeviceSpec) throws(SpecError) -> MigratableVFOptions {
        var o = MigratableVFOptions()
        if let node = spec.sections["migration"] {
            let m = try node.object(allowed: keys)
            if let v = m["registersBar"] { o.registersBAR = try v.int(in: 0...5) }
            if let v = m["registersOffset"] { o.registersOffset = try v.unsigned() }
            if let v = m["ramBar"] { o.ramBAR = try v.int(in: 0...5) }
            if let v = m["preCopy"] { o.preCopy = try v.bool() }
            if let v = m["p2p"] { o.p2p = try v.bool() }
            if let v = m["enabled"] { o.enabled = try v.bool() }
            if let v = m["workerIntervalMs"] { o.workerIntervalMs = try v.int(in: 1...1000) }
            if let v = m["batch"] { o.batch = try v.int(in: 1...4096) }
        }
        let field = spec.sections["migration"] == nil ? "bars" : "migration"
        let bars = spec.configuration.bars
        guard let rb = bars.first(where: { $0.index == o.registersBAR }), rb.backing == .registers, rb.kind != .io else {
            throw spec.error("\(field).registersBar", "BAR\(o.registersBAR) must be a register-backed memory BAR")
        }
        guard o.registersOffset % 4 == 0, o.registersOffset + MigratableVF.registerBlockSize <= min(rb.size, 1 << 20) else {
            throw spec.error("\(field).registersOffset", "the 256-byte register block does not fit in BAR\(o.registersBAR)")
        }
        guard let ram = bars.first(where: { $0.index == o.ramBAR }), case .ram = ram.backing else {
            throw spec.error("\(field).ramBar", "BAR\(o.ramBAR) must be a RAM-backed BAR (\"backing\": \"ram\")")
        }
        guard ram.size >= 4096, ram.size <= MigratableVF.maxRAM else {
            throw spec.error("\(field).ramBar", "the RAM BAR must be 4 KiB to 1 GiB, not \(ram.size) bytes")
        }
        return o
    }
}

/// `migratable-vf`: an mlx5-style VF whose state keeps changing while it runs, and
/// which migrates (VFIO migration v2 with PRE_COPY and P2P; docs/migration.md).
public struct MigratableVFDriver: VariantDriver {
    public init() {}
    public var name: String { "migratable-vf" }
    public var summary: String {
        "mlx5-style migratable VF: a descriptor ring processed by DMA, counters, a RAM BAR; migration v2 with PRE_COPY, P2P and dirty logging"
    }
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x15B3, device: 0x101E)] }
    public var sectionKeys: Set<String> { ["migration"] }

    /// The smallest spec for this variant: a 1 MiB register BAR 0, a RAM BAR 2 of
    /// `ramKiB`, 4 MSI-X vectors. `vfu migrate --bench` and the tests build from it.
    public static func minimalSpec(ramKiB: Int, vendor: String = "0x15b3", device: String = "0x101e",
                                   preCopy: Bool = true, p2p: Bool = true, batch: Int = 32) -> String {
        """
        {"name": "migratable-vf", "variant": "migratable-vf",
         "ids": {"vendor": "\(vendor)", "device": "\(device)", "subsystemVendor": "0x15b3", "subsystem": "0x0069", "classCode": "0x020000"},
         "express": true,
         "bars": [{"index": 0, "size": "1MiB", "bits": 64, "backing": "registers"},
                  {"index": 2, "size": "\(ramKiB)KiB", "bits": 64, "prefetchable": true, "backing": "ram"}],
         "interrupts": {"msix": {"vectors": 4, "bar": 0, "tableOffset": "0x2000", "pbaOffset": "0x3000"}},
         "migration": {"ramBar": 2, "preCopy": \(preCopy), "p2p": \(p2p), "batch": \(batch)}}
        """
    }

    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        do { _ = try MigratableVFOptions.parse(spec) } catch { return .decline("\(error.field): \(error.reason)") }
        return .accept
    }

    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let options = try MigratableVFOptions.parse(spec)
        let device = try spec.buildCoreDevice()
        try GenericDriver.attachDoorbell(spec, to: device)
        _ = try MigratableVF.attach(to: device, options: options, kind: name)
        return device
    }
}

/// The device model: registers, a descriptor-ring engine on its own thread, the
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
public final class MigratableVF: RegionAccessHandler, MigrationHandler, MigrationStreamConsumer, @unchecked Sendable {
    public static let registerBlockSize: UInt64 = 0x100
    public static let magic: UInt32 = 0x3146_564D
    public static let version: UInt32 = 0x0001_0000
    public static let maxRAM: UInt64 = 1 << 30
    public static let descriptorSize = 32
    public static let maxTransfer = 1 << 20

    public enum Register: Int {
        case magic = 0x00, version = 0x04, control = 0x08, status = 0x0C, ringLow = 0x10, ringHigh = 0x14
        case ringSize = 0x18, ringTail = 0x1C, ringHead = 0x20, irqVector = 0x24, completions = 0x28
        case errors = 0x2C, irqCount = 0x30, scratch = 0x34, bytesLow = 0x38, bytesHigh = 0x3C, ticks = 0x40
        case digestLow = 0x44, digestHigh = 0x48
    }

    public enum Op: UInt32 { case hash = 1, store = 2, load = 3 }
    public static let controlEnable: UInt32 = 1
    public static let controlIRQ: UInt32 = 2

    unowned let device: PCIDevice
    public let options: MigratableVFOptions
    public let kind: String
    public let ram: SharedMemory
    public let pageSize = 4096
    var pageCount: Int { ram.size / pageSize }

    // Everything below is guarded by the device lock.
    private var regs = [UInt32](repeating: 0, count: Int(registerBlockSize / 4))
    /// Bumped whenever the device stops running or resets: an engine step that waited
    /// for the client (message DMA releases the lock) and sees a new epoch abandons
    /// its descriptor without changing any state.
    private var epoch: UInt64 = 0
    private var save: SaveSession?
    private var loader: MigrationStreamLoader?
    private var stagedCore: [UInt8]?
    private var stagedDevice: [UInt8]?
    private var failure: String?
    /// A look at the ring is queued as a device job (coalesces kicks).
    private var lookQueued = false
    /// Set by `stopEngine`: no more looks are queued.
    private var engineStopped = false

    /// Builds the model on `device` and attaches its migration controller.
    public static func attach(to device: PCIDevice, options: MigratableVFOptions, kind: String = "migratable-vf") throws(SpecError) -> MigratableVF {
        guard let ram = device.barMemory[options.ramBAR] else {
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
    public func register(_ r: Register) -> UInt32 { device.lock.withLock { reg(r) } }

    /// XXH3 of the whole RAM BAR.
    public func ramDigest() -> UInt64 {
        device.lock.withLock { XXH3.hash(UnsafeRawBufferPointer(start: ram.mapping.base, count: ram.size)) }
    }

    // MARK: Registers

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(Self.registerBlockSize))
        for (i, v) in regs.enumerated() { bytes.setLE32(v, at: i * 4) }
        return Array(bytes[Int(offset)..<(Int(offset) + count)])
    }

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

    // MARK: Engine

    /// Queues a look at the ring as a device job, unless one is queued already. The
    /// register write that kicked it has been answered by the time the job runs; the
    /// job does the descriptors' DMA and raises the completion interrupt. Called with
    /// the device lock held.
    func kick() {
        guard !lookQueued, !engineStopped else { return }
        lookQueued = true
        device.submitWork { [weak self] job in
            let again: Bool = job.withDevice { _ in
                guard let self else { return false }
                self.lookQueued = false
                return self.tick(job) && self.ringPending
            } ?? false
            // Descriptors left after a batch: look again, behind any other queued work.
            if again, let self { job.withDevice { _ in self.kick() } }
        }
    }

    /// Descriptors the guest posted that the engine has not taken yet.
    private var ringPending: Bool {
        let size = reg(.ringSize)
        return size > 0 && reg(.ringHead) != reg(.ringTail) && reg(.ringTail) &- reg(.ringHead) <= size
    }

    private var running: Bool { device.migration?.deviceMayRun ?? true }

    /// One look at the ring, under the device lock (message DMA releases it while the
    /// client answers; every step re-checks `epoch`); true while the engine is enabled
    /// and running.
    @discardableResult
    func tick(_ job: DeviceJob) -> Bool {
        guard running, reg(.control) & Self.controlEnable != 0, device.busMasterEnabled else { return false }
        set(.ticks, reg(.ticks) &+ 1)
        let size = reg(.ringSize)
        guard size > 0, size <= 4096, size.nonzeroBitCount == 1 else { return true }
        let e0 = epoch
        var done = 0
        while done < options.batch && reg(.ringHead) != reg(.ringTail) && reg(.ringTail) &- reg(.ringHead) <= size {
            guard processOne(size: size, epoch: e0, job: job) else { break }
            done += 1
        }
        if done > 0 && reg(.control) & Self.controlIRQ != 0 && running {
            if device.raiseInterrupt(vector: Int(reg(.irqVector))) != nil { set(.irqCount, reg(.irqCount) &+ 1) }
        }
        return true
    }

    /// Processes the descriptor at RING_HEAD. false: the device stopped meanwhile and
    /// the descriptor was abandoned untouched (it runs again after a resume).
    private func processOne(size: UInt32, epoch e0: UInt64, job: DeviceJob) -> Bool {
        func live() -> Bool { epoch == e0 && running && job.isCurrent }
        let head = reg(.ringHead)
        let base = (UInt64(reg(.ringHigh)) << 32 | UInt64(reg(.ringLow))) &+ UInt64(head % size) * UInt64(Self.descriptorSize)
        var status: UInt32 = 1
        var result: UInt64 = 0
        var length = 0
        do {
            let d = try job.dmaRead(address: base, count: Self.descriptorSize)
            guard live() else { return false }
            let op = d.le32(at: 0), len = Int(d.le32(at: 4)), src = d.le64(at: 8), dst = d.le64(at: 16)
            let cookie = d.le32(at: 24)
            length = len
            guard len <= Self.maxTransfer else { throw VFIOErrno.E2BIG }
            switch Op(rawValue: op) {
            case .hash:
                let data = try job.dmaRead(address: src, count: len)
                guard live() else { return false }
                result = XXH64.hash(data, seed: UInt64(cookie))
                var out = [UInt8](repeating: 0, count: 16)
                out.setLE64(UInt64(cookie), at: 0)
                out.setLE64(result, at: 8)
                try job.dmaWrite(address: dst, out)
            case .store:
                let data = try job.dmaRead(address: src, count: len)
                guard live() else { return false }
                guard dst <= UInt64(ram.size), UInt64(len) <= UInt64(ram.size) - dst else { throw VFIOErrno.EFAULT }
                try ram.write(offset: dst, data: data[...])
                result = XXH64.hash(data)
            case .load:
                guard src <= UInt64(ram.size), UInt64(len) <= UInt64(ram.size) - src else { throw VFIOErrno.EFAULT }
                let data = try ram.read(offset: src, count: len)
                try job.dmaWrite(address: dst, data)
                result = XXH64.hash(data)
            case nil:
                throw VFIOErrno.EINVAL
            }
        } catch {
            guard live() else { return false }
            status = 0x100 | ((error as? VFIOErrno)?.rawValue ?? VFIOErrno.EIO.rawValue)
        }
        guard live() else { return false }
        var st = [UInt8](repeating: 0, count: 4)
        st.setLE32(status, at: 0)
        if (try? job.dmaWrite(address: base &+ 28, st)) == nil {
            guard live() else { return false }
            status = status == 1 ? 0x100 | VFIOErrno.EFAULT.rawValue : status
        }
        guard live() else { return false }
        set(.ringHead, head &+ 1)
        if status == 1 {
            set(.completions, reg(.completions) &+ 1)
            let bytes = (UInt64(reg(.bytesHigh)) << 32 | UInt64(reg(.bytesLow))) &+ UInt64(length)
            set(.bytesLow, UInt32(truncatingIfNeeded: bytes)); set(.bytesHigh, UInt32(truncatingIfNeeded: bytes >> 32))
            var mix = [UInt8](repeating: 0, count: 16)
            mix.setLE32(reg(.digestLow), at: 0); mix.setLE32(reg(.digestHigh), at: 4); mix.setLE64(result, at: 8)
            let dg = XXH64.hash(mix)
            set(.digestLow, UInt32(truncatingIfNeeded: dg)); set(.digestHigh, UInt32(truncatingIfNeeded: dg >> 32))
        } else {
            set(.errors, reg(.errors) &+ 1)
        }
        return true
    }

    // MARK: MigrationHandler

    public var failureReason: String? { failure }

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

    public func didEnter(_ state: MigrationState) {
        // Interrupts that became pending while stopped (a client unmask, say) go out now.
        if state == .running || state == .preCopy {
            device.interrupts.reevaluate()
            // Descriptors posted while stopped (or carried in a loaded state) run now.
            kick()
        }
    }

    public func deviceReset() {
        save = nil
        loader = nil
        stagedCore = nil
        stagedDevice = nil
        failure = nil
    }

    public func readStateData(into out: inout [UInt8], max: Int) throws(VFIOErrno) {
        guard let save else { throw .EINVAL }
        save.read(into: &out, max: max)
    }

    public func readStateData(max: Int, to sink: (MigrationDataPiece) -> Bool) throws(VFIOErrno) -> Int {
        guard let save else { throw .EINVAL }
        return save.produce(max: max, sink)
    }

    public func writeStateData(_ data: ArraySlice<UInt8>) throws(VFIOErrno) {
        guard let loader else { throw .EINVAL }
        loader.write(data)
    }

    public func directWriteTarget(max: Int) -> UnsafeMutableRawBufferPointer? { loader?.directTarget(max: max) }

    public func indirectWriteLimit() -> Int? { loader?.indirectReadLimit }

    public func directWriteCommitted(_ bytes: UnsafeRawBufferPointer) throws(VFIOErrno) {
        guard let loader else { throw .EINVAL }
        loader.commitDirect(bytes)
    }

    public func ramBuffer(offset: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0, offset <= UInt64(ram.size), UInt64(length) <= UInt64(ram.size) - offset else { return nil }
        return UnsafeMutableRawBufferPointer(start: ram.mapping.base + Int(offset), count: length)
    }

    public func pendingBytes() -> (initial: UInt64, dirty: UInt64) {
        guard let save else { return (0, 0) }
        return save.pending(rescan: true)
    }

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

    public func ramRangeValid(offset: UInt64, length: UInt64) -> Bool {
        offset <= UInt64(ram.size) && length <= UInt64(ram.size) - offset
    }

    public func ram(offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> MigrationStreamError? {
        guard ram.mapping.write(at: offset, from: bytes) else {
            return MigrationStreamError(.EBADMSG, "RAM data outside the device's RAM")
        }
        return nil
    }

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
