import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import Synchronization
import Testing
import VariantDevices
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// A device served in-process on its own socket.
final class Served: @unchecked Sendable {
    let device: PCIDevice
    let server: VFIOUserServer
    let path: String
    let model: MigratableVF?

    init(_ device: PCIDevice, model: MigratableVF? = nil, maxXfer: Int = 1 << 20, zeroCopy: Bool = true,
         clientTimeoutMs: Int = 5000) throws {
        self.device = device
        self.model = model
        var template = Array("/tmp/vfu-mig-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        path = dir + "/s.sock"
        var o = ServerOptions()
        o.maxDataXferSize = maxXfer
        o.migrationZeroCopy = zeroCopy
        o.clientReplyTimeoutMs = clientTimeoutMs
        server = VFIOUserServer(device: device, options: o)
        server.start(on: try UnixListener(path: path))
    }

    func client(maxXfer: Int = 1 << 20) throws -> VFIOUserClient {
        try VFIOUserClient(path: path, capabilities: VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: maxXfer, pgsizes: 4096, maxDMAMaps: 65535))
    }

    deinit {
        model?.stopEngine()
        server.stop()
    }
}

enum VF {
    static func spec(ramKiB: Int = 1024, device: String = "0x101e", vendor: String = "0x15b3", preCopy: Bool = true, p2p: Bool = true) -> String {
        MigratableVFDriver.minimalSpec(ramKiB: ramKiB, vendor: vendor, device: device, preCopy: preCopy, p2p: p2p, batch: 8)
    }

    /// A migratable VF served on a fresh socket.
    static func serve(ramKiB: Int = 1024, device: String = "0x101e", vendor: String = "0x15b3", preCopy: Bool = true,
                      p2p: Bool = true, maxXfer: Int = 1 << 20, zeroCopy: Bool = true, clientTimeoutMs: Int = 5000) throws -> Served {
        let s = try DeviceSpec.parse(Array(spec(ramKiB: ramKiB, device: device, vendor: vendor, preCopy: preCopy, p2p: p2p).utf8),
                                     file: "<test>", sectionKeys: VariantRegistry.standard.sectionKeys)
        let d = try s.buildCoreDevice()
        let m = try MigratableVF.attach(to: d, options: try MigratableVFOptions.parse(s))
        return try Served(d, model: m, maxXfer: maxXfer, zeroCopy: zeroCopy, clientTimeoutMs: clientTimeoutMs)
    }
}

/// The guest side of a migratable VF: its memory, ring and registers, driven through a VMM client.
final class Guest: @unchecked Sendable {
    static let iova: UInt64 = 0x1000_0000
    static let memSize = 4 << 20
    static let ringEntries: UInt32 = 64
    static let ringOffset = 0
    static let dataOffset = 0x10000        // 64 KiB of source data
    static let resultOffset = 0x100000     // one 4 KiB page per ring slot

    let client: VFIOUserClient
    let memory: ClientMemory
    var tail: UInt32 = 0
    var irq: OwnedFD?
    private let stopFlag = Locked(false)
    private let running = Locked(false)
    /// Pages the guest CPU wrote (the VMM copies them; KVM would track them).
    let cpuDirty = Locked(Set<Int>())

    init(client: VFIOUserClient, mapWithFD: Bool = true, memory: ClientMemory? = nil) throws {
        self.client = client
        self.memory = try memory ?? ClientMemory(size: Self.memSize)
        if mapWithFD { try client.dmaMap(self.memory, address: Self.iova) } else { try client.dmaMapWithoutFD(self.memory, address: Self.iova) }
    }

    func reg(_ r: MigratableVF.Register) throws -> UInt32 { try client.read32(region: 0, offset: UInt64(r.rawValue)) }
    func setReg(_ r: MigratableVF.Register, _ v: UInt32) throws { try client.write32(region: 0, offset: UInt64(r.rawValue), v) }

    /// Bus master + memory, IRQ eventfd, ring registers, fill data.
    func setUp(enable: Bool = true) throws {
        try client.writeConfig16(0x04, 0x0006)
        irq = try client.enableEventFDs(index: IRQIndex.msix.rawValue, count: 1)[0]
        var data = [UInt8](repeating: 0, count: 0x10000)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        memory.write(at: Self.dataOffset, data)
        try setReg(.ringLow, UInt32(truncatingIfNeeded: Self.iova + UInt64(Self.ringOffset)))
        try setReg(.ringHigh, UInt32(truncatingIfNeeded: (Self.iova + UInt64(Self.ringOffset)) >> 32))
        try setReg(.ringSize, Self.ringEntries)
        try setReg(.irqVector, 0)
        if enable { try setReg(.control, MigratableVF.controlEnable | MigratableVF.controlIRQ) }
    }

    /// Writes descriptor `index` (free-running) and returns its slot.
    @discardableResult
    func put(op: MigratableVF.Op, len: UInt32 = 4096, src: UInt64? = nil, dst: UInt64? = nil, index: UInt32, ramSize: Int = 1 << 20) -> Int {
        let slot = Int(index % Self.ringEntries)
        var d = [UInt8](repeating: 0, count: 32)
        d.setLE32(op.rawValue, at: 0)
        d.setLE32(len, at: 4)
        let ramPage = UInt64((Int(index) * 4096) % ramSize)
        let result = Self.iova + UInt64(Self.resultOffset + slot * 4096)
        switch op {
        case .hash: d.setLE64(src ?? Self.iova + UInt64(Self.dataOffset), at: 8); d.setLE64(dst ?? result, at: 16)
        case .store: d.setLE64(src ?? Self.iova + UInt64(Self.dataOffset + Int(index % 8) * 4096), at: 8); d.setLE64(dst ?? ramPage, at: 16)
        case .load: d.setLE64(src ?? ramPage, at: 8); d.setLE64(dst ?? result, at: 16)
        }
        d.setLE32(index, at: 24)
        memory.write(at: Self.ringOffset + slot * 32, d)
        cpuDirty.withLock { _ = $0.insert((Self.ringOffset + slot * 32) / 4096) }
        return slot
    }

    /// Queues up to `count` descriptors the ring has room for and rings the doorbell.
    func submit(_ count: Int, ramSize: Int = 1 << 20) throws {
        let head = try reg(.ringHead)
        var n = 0
        while n < count && tail &- head < Self.ringEntries - 1 {
            let ops: [MigratableVF.Op] = [.hash, .store, .load]
            put(op: ops[Int(tail % 3)], index: tail, ramSize: ramSize)
            tail &+= 1
            n += 1
        }
        try setReg(.ringTail, tail)
    }

    /// Keeps the ring busy from a thread until `stop()`.
    func startLoad(ramSize: Int = 1 << 20) {
        stopFlag.withLock { $0 = false }
        running.withLock { $0 = true }
        spawnThread(name: "guest-load") { [self] in
            while !stopFlag.withLock({ $0 }) {
                try? submit(16, ramSize: ramSize)
                usleep(2000)
            }
            running.withLock { $0 = false }
        }
    }

    func stop() {
        stopFlag.withLock { $0 = true }
        while running.withLock({ $0 }) { usleep(500) }
    }

    func waitFor(_ r: MigratableVF.Register, atLeast v: UInt32, timeoutMs: Int = 5000) throws -> Bool {
        for _ in 0..<(timeoutMs / 5) {
            if try reg(r) >= v { return true }
            usleep(5000)
        }
        return false
    }
}

func waitUntil(timeoutMs: Int = 5000, _ cond: () throws -> Bool) rethrows -> Bool {
    for _ in 0..<(timeoutMs / 2) {
        if try cond() { return true }
        usleep(2000)
    }
    return try cond()
}

/// A recording handler for state-machine tests on a plain core device.
final class RecordingHandler: MigrationHandler, @unchecked Sendable {
    var arcs: [(MigrationState, MigrationState)] = []
    var failOn: (MigrationState, MigrationState)?
    func transition(from: MigrationState, to: MigrationState) throws(VFIOErrno) {
        if let f = failOn, f == (from, to) { throw .EIO }
        arcs.append((from, to))
    }
    func readStateData(into out: inout [UInt8], max: Int) throws(VFIOErrno) {}
    func writeStateData(_ data: ArraySlice<UInt8>) throws(VFIOErrno) {}
    func pendingBytes() -> (initial: UInt64, dirty: UInt64) { (0, 0) }
    var failureReason: String? { "injected failure" }
}

func plainDevice(handler: RecordingHandler, preCopy: Bool = true, p2p: Bool = true) throws -> PCIDevice {
    var c = PCIDeviceConfiguration(name: "fsm", identity: PCIIdentity(vendor: 0x1b36, device: 0x77))
    c.bars = [BARDescriptor(index: 0, size: 4096)]
    let d = try PCIDevice(configuration: c)
    d.migration = MigrationController(handler: handler, preCopy: preCopy, p2p: p2p)
    return d
}
