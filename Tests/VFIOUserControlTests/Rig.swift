import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserControl
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

/// A device served in this process with the control plane attached: its vfio-user
/// socket for a VMM-like client and its control socket, both real Unix sockets.
final class Rig: @unchecked Sendable {
    let dir: String
    let socketPath: String
    let controlPath: String
    let device: PCIDevice
    let controlled: ControlledDevice
    let server: VFIOUserServer
    let control: ControlServer

    init(spec: String = "default.json", tag: String = "ctl") throws {
        let registry = VariantRegistry.standard
        let s = try registry.loadSpec(path: repositoryRoot + "/specs/" + spec)
        device = try registry.bind(s).driver.build(s)
        controlled = ControlledDevice(name: device.configuration.name, device: device)
        var options = ServerOptions()
        options.hooks = controlled
        server = VFIOUserServer(device: device, options: options)
        controlled.attach(server: server)
        var template = Array("/tmp/vfu-\(tag.prefix(8))-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        socketPath = dir + "/s.sock"
        controlPath = dir + "/c.sock"
        server.start(on: try UnixListener(path: socketPath))
        control = try ControlServer(path: controlPath, devices: [controlled])
        control.start()
    }

    func ctl() throws -> ControlClient { try ControlClient(path: controlPath) }

    /// A VMM-like client: negotiated, memory and bus mastering on.
    func vmm(enable: Bool = true) throws -> VFIOUserClient {
        var sock: MessageSocket? = nil
        for _ in 0..<500 {
            if let s = try? MessageSocket.connect(path: socketPath) { sock = s; break }
            usleep(10_000)
        }
        guard let sock else { throw TestFailure("cannot connect to \(socketPath)") }
        let c = VFIOUserClient(socket: sock)
        c.timeoutMs = 5000
        try c.negotiate()
        if enable { try c.writeConfig16(0x04, 0x2 | 0x4) }
        return c
    }

    func stop() {
        control.stop()
        server.stop()
        device.work.hold(false)
        device.stopWork()
        for f in ["s.sock", "c.sock"] { unlink(dir + "/" + f) }
        rmdir(dir)
    }
}

extension ControlClient {
    /// Sends a request built by `body` and returns the reply.
    func req(_ op: String, _ body: (inout ControlRequest) -> Void = { _ in }) throws -> ControlReply {
        var q = ControlRequest(op: op)
        body(&q)
        return try call(q)
    }

    /// The reply, which must be ok.
    func ok(_ op: String, _ body: (inout ControlRequest) -> Void = { _ in }) throws -> ControlReply {
        let r = try req(op, body)
        guard r.ok else { throw TestFailure("\(op) refused: \(r.error ?? "?"): \(r.reason ?? "")") }
        return r
    }
}

enum DB {
    static let scratch: UInt64 = 0x08, completions: UInt64 = 0x0C, addrLow: UInt64 = 0x10, addrHigh: UInt64 = 0x14
    static let length: UInt64 = 0x18, pattern: UInt64 = 0x1C, doorbell: UInt64 = 0x20, irqVector: UInt64 = 0x24
    static let error: UInt64 = 0x2C

    /// Programs a FILL of `length` bytes at `address`, rings it and waits for COMPLETIONS to move.
    static func fill(_ c: VFIOUserClient, address: UInt64, length: UInt32, pattern: UInt32 = 0x1234_0000) throws -> UInt32 {
        try c.write32(region: 0, offset: addrLow, UInt32(truncatingIfNeeded: address))
        try c.write32(region: 0, offset: addrHigh, UInt32(truncatingIfNeeded: address >> 32))
        try c.write32(region: 0, offset: self.length, length)
        try c.write32(region: 0, offset: self.pattern, pattern)
        let before = try c.read32(region: 0, offset: completions)
        try c.write32(region: 0, offset: doorbell, 1)
        let deadline = monotonicMs() + 10_000
        while try c.read32(region: 0, offset: completions) == before {
            guard monotonicMs() < deadline else { throw TestFailure("FILL never completed") }
            usleep(200)
        }
        return try c.read32(region: 0, offset: error)
    }
}

func fault(_ kind: FaultSpec.Kind, _ body: (inout FaultSpec) -> Void = { _ in }) -> FaultSpec {
    var f = FaultSpec(kind: kind)
    body(&f)
    return f
}

/// What a fault test works with: a rig, a control client and a VMM-like client (memory
/// and bus mastering on), and guest memory DMA-mapped when the test asked for it.
struct FaultBench {
    let rig: Rig
    let ctl: ControlClient
    let vmm: VFIOUserClient
    /// The guest memory mapped for DMA (nil unless `withFaultBench` was given an address).
    let mem: ClientMemory?

    /// Adds a fault of `kind` shaped by `body` over the control socket (`fault-add`) and
    /// returns the reply; throws unless the server accepted it (armed, or pending on a trigger).
    @discardableResult
    func arm(_ kind: FaultSpec.Kind, _ body: (inout FaultSpec) -> Void = { _ in }) throws -> ControlReply {
        try ctl.ok("fault-add") { $0.fault = fault(kind, body) }
    }
}

/// Runs `body` on a fresh bench named `tag`; with `dmaAt`, 64 KiB of guest memory is
/// DMA-mapped there first. Takes it down after: the VMM, the control client, the rig.
func withFaultBench(tag: String, dmaAt address: UInt64? = nil, _ body: (FaultBench) throws -> Void) throws {
    let rig = try Rig(tag: tag)
    defer { rig.stop() }
    let ctl = try rig.ctl()
    defer { ctl.close() }
    let vmm = try rig.vmm()
    defer { vmm.close() }
    var mem: ClientMemory? = nil
    if let address {
        let m = try ClientMemory(size: 64 << 10)
        try vmm.dmaMap(m, address: address)
        mem = m
    }
    try body(FaultBench(rig: rig, ctl: ctl, vmm: vmm, mem: mem))
}
