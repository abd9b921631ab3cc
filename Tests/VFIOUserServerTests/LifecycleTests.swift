import Glibc
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// Connection lifecycle: fd hygiene over many connections, and one client's
/// error never costing another client its state.
@Suite struct LifecycleTests {
    /// One connect / negotiate / work / disconnect cycle of kind `i % 5`.
    func cycle(_ i: Int, path: String, memory: ClientMemory) throws {
        // A fresh IOVA per cycle: the previous connection may still be closing.
        let iova = 0x100_0000_0000 + UInt64(i) << 21
        switch i % 5 {
        case 0:
            // Negotiate and leave.
            let c = try makeClient(path)
            c.close()
        case 1:
            // DMA_MAP of a memfd, MSI-X and INTx eventfds, then just disconnect.
            let c = try makeClient(path)
            try c.dmaMap(memory, address: iova)
            _ = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 0, count: 2)
            _ = try c.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)
            c.close()
        case 2:
            // The RAM BAR's fd, an fd-less map, an irqfd (EVENTFD|UNMASK) and ERR.
            let c = try makeClient(path)
            let (_, fd) = try c.regionInfo(2)
            fd?.close()
            try c.dmaMapWithoutFD(memory, address: iova)
            let resample = try EventFD.create()
            try c.setIRQs(index: IRQIndex.intx.rawValue, flags: [.dataEventFD, .actionUnmask], start: 0, count: 1,
                          fds: [resample.rawValue])
            _ = try c.enableEventFDs(index: IRQIndex.err.rawValue, count: 1)
            try c.dmaUnmap(address: iova, size: UInt64(memory.size))
            c.close()
        case 3:
            // Rejected fds, then gone in the middle of a message that carries fds.
            let p = try RawPeer(path: path)
            try p.negotiate()
            let e1 = try EventFD.create(), e2 = try EventFD.create()
            _ = try p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, fds: [e1.rawValue])
            var bytes = MessageHeader(messageID: 77, command: .deviceSetIRQs, messageSize: 36).bytes
            bytes += [20, 0, 0, 0, 0x24, 0, 0, 0]
            try p.sendRaw(bytes, fds: [e1.rawValue, e2.rawValue])
            p.close()
        default:
            // Never negotiates: connect and drop, or a first message that is not VERSION.
            let p = try RawPeer(path: path)
            if i % 2 == 0 { _ = try p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded) }
            p.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aThousandConnectionsLeaveTheServersFDCountUnchanged() throws {
        let s = try ServedDevice(tag: "fdleak")
        defer { s.stop() }
        let memory = try ClientMemory(size: 1 << 20)
        // Warm-up: one cycle of each kind, so one-time lazy resources (the irqfd
        // watcher's wake eventfd) exist before the baseline.
        for i in 0..<5 { try cycle(i, path: s.path, memory: memory) }
        let before = s.process.stableFDCount()
        #expect(before > 0)
        let threadsBefore = s.process.threadCount
        let mapsBefore = s.process.mappingCount
        // The count sees what a connection holds: its socket and three eventfds.
        do {
            let c = try makeClient(s.path)
            let fds = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 0, count: 3)
            #expect(s.process.fdCount == before + 4)
            c.close()
            _ = fds
            #expect(s.process.fdCount(settlingTo: before) == before)
        }
        for i in 0..<1000 {
            try cycle(i, path: s.path, memory: memory)
            if i % 100 == 99 { #expect(s.process.isAlive, "cycle \(i)") }
        }
        let after = s.process.fdCount(settlingTo: before, timeoutMs: 5000)
        #expect(after == before, "server fds: \(before) before, \(after) after 1,000 connections")
        let threadsAfter = s.process.value({ s.process.threadCount }, settlingTo: threadsBefore)
        #expect(threadsAfter == threadsBefore, "server threads: \(threadsBefore) before, \(threadsAfter) after")
        // 200 of the cycles mapped a memfd; a few new malloc arenas (and, under a sanitizer,
        // its own mappings) are fine, a mapping per cycle is not.
        let mapsAfter = s.process.mappingCount
        #expect(mapsAfter <= mapsBefore + 64, "server mappings: \(mapsBefore) before, \(mapsAfter) after (DMA mmaps released)")
        #expect(s.process.isAlive)
        #expect(s.stillServes())
    }

    @Test func anotherClientsErrorLosesNothingAClientWrote() throws {
        let s = try InProcessServer(tag: "twocli")
        defer { s.stop() }
        let a = try s.client()
        try a.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        try a.write32(region: 0, offset: 0x104, 0xA11C_E000)
        try a.write32(region: 0, offset: Doorbell.scratch, 0x5C_4A7C)
        try a.write(region: 2, offset: 0x40, [9, 8, 7, 6])
        let mem = try ClientMemory(size: 1 << 16)
        try a.dmaMap(mem, address: 0x8000_0000)
        let irq = try a.enableEventFDs(index: IRQIndex.msix.rawValue, start: 2, count: 1)[0]

        // B negotiates, then sends a header with msg_size 8 and is dropped.
        let b = try RawPeer(path: s.path)
        try b.negotiate()
        #expect(b.inSync())
        try b.sendRaw(MessageHeader(messageID: 1, command: .regionWrite, messageSize: 8).bytes + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(errorNumber(b.receive()) == 22)
        #expect(b.receive().isClosed, "B is dropped")
        // C never negotiates; D disconnects mid-message with fds attached.
        let c = try RawPeer(path: s.path)
        _ = try c.call(.regionWrite, RegionAccess(offset: 0x104, region: 0, data: [0, 0, 0, 0]).encoded)
        #expect(c.receive().isClosed, "C is dropped")
        let d = try RawPeer(path: s.path)
        try d.negotiate()
        let e = try EventFD.create()
        try d.sendRaw(MessageHeader(messageID: 3, command: .deviceSetIRQs, messageSize: 36).bytes + [20, 0], fds: [e.rawValue])
        d.close()
        // Wait until B, C and D are all gone from the server.
        for _ in 0..<500 where s.server.connectionCounts.active > 1 { sleepMs(10) }
        #expect(s.server.connectionCounts.active == 1)
        #expect(s.device.resetCount == 0, "no reset while A is connected")

        // A's state is intact and A keeps working.
        #expect(try a.readConfig16(0x04) == Cmd.memory | Cmd.busMaster)
        #expect(try a.read32(region: 0, offset: 0x104) == 0xA11C_E000)
        #expect(try Doorbell.read(a, Doorbell.scratch) == 0x5C_4A7C)
        #expect(try a.read(region: 2, offset: 0x40, count: 4) == [9, 8, 7, 6])
        try Doorbell.program(a, address: 0x8000_0000, length: 32, pattern: 0xF111_0000, vector: 2)
        try Doorbell.ring(a, Doorbell.fill)
        #expect(try Doorbell.read(a, Doorbell.error) == 0, "A's DMA map survived")
        #expect(mem.read(at: 0, count: 4) == [0x00, 0x00, 0x11, 0xF1])
        #expect(EventFD.wait(irq.rawValue, timeoutMs: 2000) == 1, "A's eventfd survived")
        try a.write32(region: 0, offset: 0x104, 0xA11C_E001)
        #expect(try a.read32(region: 0, offset: 0x104) == 0xA11C_E001)

        // A well-behaved second client shares the device and leaves without resetting it.
        let e2 = try s.client()
        #expect(try e2.read32(region: 0, offset: 0x104) == 0xA11C_E001)
        e2.close()
        for _ in 0..<500 where s.server.connectionCounts.active > 1 { sleepMs(10) }
        #expect(try a.read32(region: 0, offset: 0x104) == 0xA11C_E001)
        #expect(s.device.resetCount == 0)
    }

    /// stop() closes live connections (the clients see the close) and joins their
    /// threads before it returns; the device's work thread ends with stopWork().
    @Test func stopClosesLiveConnectionsAndJoinsTheirThreads() throws {
        let s = try InProcessServer(tag: "stop-live")
        let a = try s.client()
        let b = try s.client()
        #expect(try a.deviceInfo().numRegions == 9 && b.deviceInfo().numRegions == 9)
        #expect(s.server.connectionCounts.active == 2)
        s.stop()
        #expect(s.server.connectionCounts.active == 0, "every connection thread has ended")
        #expect(throws: ClientError.self) { _ = try a.deviceInfo() }
        #expect(throws: ClientError.self) { _ = try b.deviceInfo() }
        s.device.stopWork()
        #expect(!s.device.submitWork { _ in }, "no work after stopWork")
    }

}
