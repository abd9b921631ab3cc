import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// A peer that behaves as QEMU's vCPU does with guest RAM that has no fd: it sends an
/// MMIO access and waits for *its* reply before it answers anything else (QEMU's main
/// loop, which answers our DMA_READ / DMA_WRITE, needs the lock the vCPU holds).
/// The device must answer the access first and do its DMA afterwards.
private final class VCPUPeer {
    let peer: RawPeer
    static let base: UInt64 = 0x4000_0000

    init(_ s: InProcessServer) throws {
        peer = try RawPeer(path: s.path)
        try peer.negotiate()
        // fd-less guest RAM, as QEMU maps its default (anonymous) memory.
        try expectOK(.dmaMap, DMAMapRequest(flags: [.read, .write], offset: 0, address: Self.base, size: 1 << 16).encoded)
        try configWrite16(0x04, Cmd.memory | Cmd.busMaster)
    }

    /// Sends a request and returns its reply, which must be the next message.
    @discardableResult
    func expectOK(_ command: Command, _ payload: [UInt8]) throws -> ReceivedMessage {
        let id = try peer.send(command, payload)
        guard let m = peer.receive().message else { throw TestFailure("\(command): no reply") }
        guard m.header.isReply, m.header.messageID == id else {
            throw TestFailure("\(command) #\(id): the next message was \(m.header.command) #\(m.header.messageID) (reply: \(m.header.isReply))")
        }
        guard !m.header.isError else { throw TestFailure("\(command) failed: \(VFIOErrno(m.header.errorNumber))") }
        return m
    }

    func configWrite16(_ offset: UInt64, _ v: UInt16) throws {
        try expectOK(.regionWrite, RegionAccess(offset: offset, region: 7, data: [UInt8(v & 0xFF), UInt8(v >> 8)]).encoded)
    }

    func write32(_ offset: UInt64, _ v: UInt32) throws {
        var b = [UInt8](repeating: 0, count: 4)
        b.setLE32(v, at: 0)
        try expectOK(.regionWrite, RegionAccess(offset: offset, region: Doorbell.bar, data: b).encoded)
    }

    func read32(_ offset: UInt64) throws -> UInt32 {
        let m = try expectOK(.regionRead, RegionAccess(offset: offset, region: Doorbell.bar, count: 4).encoded)
        return try RegionAccess(payload: Array(m.payload)).data.le32(at: 0)
    }

    func program(address: UInt64, length: UInt32, pattern: UInt32 = 0) throws {
        try write32(Doorbell.addrLow, UInt32(truncatingIfNeeded: address))
        try write32(Doorbell.addrHigh, UInt32(truncatingIfNeeded: address >> 32))
        try write32(Doorbell.length, length)
        try write32(Doorbell.pattern, pattern)
    }

    /// The server's next message, which must be a DMA request of `command`.
    func nextDMARequest(_ command: Command) throws -> (header: MessageHeader, access: DMAAccess) {
        guard let m = peer.receive().message else { throw TestFailure("no \(command) request") }
        guard !m.header.isReply, m.header.command == command else {
            throw TestFailure("expected a \(command) request, got \(m.header.command) (reply: \(m.header.isReply))")
        }
        return (m.header, try DMAAccess(payload: Array(m.payload)))
    }

    func answer(_ h: MessageHeader, _ payload: [UInt8]) throws {
        try peer.socket.send(header: MessageHeader(messageID: h.messageID, command: h.command, messageSize: 0, flags: 1),
                             payload: payload)
    }

    /// Polls COMPLETIONS (the vCPU reading a status register) until it passes `above`.
    func waitForCompletion(above: UInt32) throws {
        guard try waitUntil(timeoutMs: 10_000, { try read32(Doorbell.completions) > above }) else {
            throw TestFailure("the command never completed")
        }
    }
}

@Suite struct ExecutionModelTests {
    static let pattern: UInt32 = 0x5150_0000

    @Test func aDoorbellWriteIsAnsweredBeforeTheDMAWriteItStarts() throws {
        let s = try InProcessServer(tag: "exec-fill")
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.program(address: VCPUPeer.base + 0x100, length: 64, pattern: Self.pattern)
        // The reply to the doorbell write comes first: the vCPU is not held.
        try v.write32(Doorbell.doorbell, Doorbell.fill)
        let (h, access) = try v.nextDMARequest(.dmaWrite)
        #expect(access.address == VCPUPeer.base + 0x100 && access.count == 64)
        #expect(access.data.le32(at: 0) == Self.pattern && access.data.le32(at: 60) == Self.pattern + 15)
        // Before answering, the vCPU goes on reading registers: served meanwhile.
        #expect(try v.read32(Doorbell.magic) == 0x4455_4656)
        #expect(try v.read32(Doorbell.completions) == 0, "the fill waits for its DMA")
        try v.answer(h, [])
        try v.waitForCompletion(above: 0)
        #expect(try v.read32(Doorbell.error) == 0)
    }

    @Test func aChecksumReadsThroughDMAReadAfterItsDoorbellWasAnswered() throws {
        let s = try InProcessServer(tag: "exec-sum")
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.program(address: VCPUPeer.base + 0x2000, length: 300)
        try v.write32(Doorbell.doorbell, Doorbell.checksum)
        let (h, access) = try v.nextDMARequest(.dmaRead)
        #expect(access.address == VCPUPeer.base + 0x2000 && access.count == 300)
        let data = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try v.answer(h, DMAAccess(address: access.address, count: 300, data: data).encoded)
        try v.waitForCompletion(above: 0)
        #expect(try v.read32(Doorbell.error) == 0)
        #expect(try v.read32(Doorbell.result) == fnv1a(data))
    }

    /// The device lock is released while the client answers a DMA: whatever the DMA
    /// relied on is checked again when the answer comes.
    @Test func anUnmapWhileTheDMAWaitsFailsItWithEFAULT() throws {
        let s = try InProcessServer(tag: "exec-unmap")
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.write32(Doorbell.result, 0)
        try v.program(address: VCPUPeer.base, length: 16)
        try v.write32(Doorbell.doorbell, Doorbell.checksum)
        let (h, access) = try v.nextDMARequest(.dmaRead)
        try v.expectOK(.dmaUnmap, DMAUnmapRequest(address: VCPUPeer.base, size: 1 << 16).encoded)
        try v.answer(h, DMAAccess(address: access.address, count: 16, data: [UInt8](repeating: 9, count: 16)).encoded)
        try v.waitForCompletion(above: 0)
        #expect(try v.read32(Doorbell.error) == VFIOErrno.EFAULT.rawValue, "the mapping went away during the DMA")
        #expect(try v.read32(Doorbell.result) == 0, "data read from an unmapped range is not used")
    }

    @Test func clearingBusMasterWhileTheDMAWaitsFailsItWithEPERM() throws {
        let s = try InProcessServer(tag: "exec-bme")
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.program(address: VCPUPeer.base, length: 16)
        try v.write32(Doorbell.doorbell, Doorbell.checksum)
        let (h, access) = try v.nextDMARequest(.dmaRead)
        try v.configWrite16(0x04, Cmd.memory)
        try v.answer(h, DMAAccess(address: access.address, count: 16, data: [UInt8](repeating: 9, count: 16)).encoded)
        try v.waitForCompletion(above: 0)
        #expect(try v.read32(Doorbell.error) == VFIOErrno.EPERM.rawValue)
        #expect(try v.read32(Doorbell.result) == 0)
    }

    @Test func aResetWhileTheDMAWaitsCancelsTheCommand() throws {
        let s = try InProcessServer(tag: "exec-reset")
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.program(address: VCPUPeer.base, length: 64, pattern: 1)
        try v.write32(Doorbell.doorbell, Doorbell.fill)
        let (h, _) = try v.nextDMARequest(.dmaWrite)
        try v.expectOK(.deviceReset, [])
        try v.answer(h, [])
        #expect(s.device.work.waitUntilIdle())
        try v.configWrite16(0x04, Cmd.memory | Cmd.busMaster)
        #expect(try v.read32(Doorbell.completions) == 0, "a command cancelled by the reset publishes nothing")
        #expect(try v.read32(Doorbell.error) == 0)
        // The device works after it: a new command over the same mapping.
        try v.program(address: VCPUPeer.base, length: 4, pattern: 2)
        try v.write32(Doorbell.doorbell, Doorbell.fill)
        let (h2, a2) = try v.nextDMARequest(.dmaWrite)
        #expect(a2.data == [2, 0, 0, 0])
        try v.answer(h2, [])
        try v.waitForCompletion(above: 0)
    }

    /// A client that hangs up instead of answering: the job fails when the connection
    /// closes, not at the reply timeout (set to a minute here), and nothing is left.
    @Test func aClientThatLeavesInsteadOfAnsweringEndsTheJob() throws {
        var o = ServerOptions()
        o.clientReplyTimeoutMs = 60_000
        let s = try InProcessServer(tag: "exec-gone", options: o)
        defer { s.stop() }
        let v = try VCPUPeer(s)
        try v.program(address: VCPUPeer.base, length: 64)
        try v.write32(Doorbell.doorbell, Doorbell.checksum)
        _ = try v.nextDMARequest(.dmaRead)
        v.peer.close()
        #expect(s.device.work.waitUntilIdle(timeoutMs: 30_000), "the job waited for the reply timeout")
        #expect(waitUntil { s.device.owner == nil })
        // The next client finds a fresh, working device.
        let c = try s.client()
        try c.writeConfig16(0x04, Cmd.memory)
        #expect(try Doorbell.read(c, Doorbell.completions) == 0)
    }

    @Test func commandsRunInTheOrderTheirDoorbellsRang() throws {
        let s = try InProcessServer(tag: "exec-order")
        defer { s.stop() }
        let c = try s.client()
        let mem = try ClientMemory(size: 1 << 16)
        try c.dmaMap(mem, address: VCPUPeer.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        // Three posted fills of one dword: the last pattern wins, and all three complete.
        for k: UInt32 in 1...3 {
            try Doorbell.program(c, address: VCPUPeer.base, length: 4, pattern: k)
            try Doorbell.ring(c, Doorbell.fill, posted: true, wait: false)
        }
        try #require(waitUntil { (try? Doorbell.read(c, Doorbell.completions)) == 3 })
        #expect(mem.read(at: 0, count: 4) == [3, 0, 0, 0])
    }
}
