import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// The client library against specs/default.json over a real Unix socket:
/// negotiation, info queries, mmap of the RAM BAR, eventfd interrupts, register
/// access, posted writes, WRITE_MULTI and reset.
@Suite struct HappyPathTests {
    // MARK: VERSION

    /// QEMU 11.1's exact VERSION request (docs: qemu-client.md).
    static let qemuJSON = #"{"capabilities":{"pgsizes":4096,"max_msg_fds":16,"max_dma_maps":65535,"max_data_xfer_size":1048576,"migration":{"max_bitmap_size":268435456,"pgsize":4096},"write_multiple":true}}"#

    /// Checks a VERSION reply against its request; returns the parsed payload.
    func checkVersionReply(_ x: Incoming, id: UInt16, requestSize: Int) throws -> VersionPayload {
        let m = try #require(x.message, "VERSION: \(x)")
        #expect(m.header.messageID == id)
        #expect(m.header.command == .version)
        #expect(m.header.isReply && !m.header.isError, "\(x)")
        #expect(Int(m.header.messageSize) <= requestSize, "reply \(m.header.messageSize) bytes, request \(requestSize)")
        #expect(m.bytes.count == Int(m.header.messageSize))
        #expect(m.payload.last == 0, "JSON not NUL-terminated")
        let v = try VersionPayload(payload: Array(m.payload))
        #expect(v.major == 0 && v.minor == 0)
        // The JSON is an object (QEMU requires one).
        #expect(v.rawJSON.first == UInt8(ascii: "{") && v.rawJSON.last == UInt8(ascii: "}"))
        return v
    }

    @Test func versionWithQEMUsRequestIsZeroZeroAndFits() throws {
        let s = try InProcessServer(tag: "verq")
        defer { s.stop() }
        let p = try RawPeer(path: s.path)
        var payload: [UInt8] = [0, 0, 0, 0] + Array(Self.qemuJSON.utf8) + [0]
        let id = try p.send(.version, payload)
        let v = try checkVersionReply(p.receive(), id: id, requestSize: 16 + payload.count)
        let caps = try #require(v.capabilities)
        #expect((1...16).contains(caps.effectiveMaxMsgFDs))
        #expect((4096...(64 << 20)).contains(caps.effectiveMaxDataXferSize))
        #expect(caps.writeMultiple == true, "the server implements WRITE_MULTI and had room to say so")
        #expect(p.inSync())
        // A client proposing a higher minor still gets 0.0.
        let q = try RawPeer(path: s.path)
        payload[2] = 7
        let id2 = try q.send(.version, payload)
        _ = try checkVersionReply(q.receive(), id: id2, requestSize: 16 + payload.count)
    }

    @Test func versionWithTV1IsNeverLongerThanTheRequest() throws {
        let s = try InProcessServer(tag: "vertv1")
        defer { s.stop() }
        let tv1: [UInt8] = [
            0x01, 0x00, 0x01, 0x00, 0x37, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x63, 0x61, 0x70, 0x61, 0x62, 0x69, 0x6c, 0x69, 0x74, 0x69,
            0x65, 0x73, 0x22, 0x3a, 0x7b, 0x22, 0x6d, 0x61, 0x78, 0x5f, 0x6d, 0x73, 0x67, 0x5f, 0x66, 0x64,
            0x73, 0x22, 0x3a, 0x38, 0x7d, 0x7d, 0x00,
        ]
        #expect(tv1.count == 55)
        let p = try RawPeer(path: s.path)
        try p.sendRaw(tv1)
        let v = try checkVersionReply(p.receive(), id: 1, requestSize: 55)
        // Whatever the server said fits; what it could not say is the default.
        #expect(v.effectiveCapabilities.effectiveMaxMsgFDs <= 16)
        #expect(p.inSync())
    }

    @Test func versionWithTheSmallestRequestsIsNeverLongerThanTheRequest() throws {
        let s = try InProcessServer(tag: "vermin")
        defer { s.stop() }
        // `{}` + NUL, and no JSON at all (the JSON is optional in the specification).
        for payload: [UInt8] in [[0, 0, 0, 0, UInt8(ascii: "{"), UInt8(ascii: "}"), 0], [0, 0, 0, 0]] {
            let p = try RawPeer(path: s.path)
            let id = try p.send(.version, payload)
            let x = p.receive()
            let m = try #require(x.message, "VERSION \(payload.count)-byte payload: \(x)")
            #expect(m.header.messageID == id && m.header.isReply && !m.header.isError, "\(x)")
            #expect(Int(m.header.messageSize) <= 16 + payload.count,
                    "reply \(m.header.messageSize) bytes to a \(16 + payload.count)-byte request")
            let v = try VersionPayload(payload: Array(m.payload))
            #expect(v.major == 0 && v.minor == 0)
            #expect(p.inSync())
        }
    }

    // MARK: Info

    @Test func deviceRegionAndIRQInfoMatchTheSpec() throws {
        let s = try InProcessServer(tag: "info")
        defer { s.stop() }
        let c = try s.client()
        let info = try c.deviceInfo()
        #expect(info.argsz == 16)
        #expect(info.flags == [.pci, .reset])
        #expect(info.numRegions == 9)
        #expect(info.numIRQs == 5)

        // index: (size, flags, fd expected)
        let expected: [UInt32: (UInt64, RegionInfoFlags, Bool)] = [
            0: (0x1000, [.read, .write], false),
            1: (0, [], false),
            2: (0x10_0000, [.read, .write, .mmap], true),
            3: (0, [], false),  // upper half of the 64-bit BAR2
            4: (32, [.read, .write], false),
            5: (0, [], false),
            6: (0, [], false),  // no ROM
            7: (256, [.read, .write], false),
            8: (0, [], false),  // no VGA
        ]
        for i in UInt32(0)..<9 {
            let m = try c.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: 32, index: i).encoded)
            defer { m.closeFDs() }
            let r = try RegionInfo(payload: Array(m.payload))
            let (size, flags, fd) = expected[i]!
            #expect(r.index == i)
            #expect(r.size == size, "region \(i)")
            #expect(r.flags == flags, "region \(i): flags \(r.flags.rawValue)")
            #expect(r.argsz == 32 && r.capOffset == 0, "region \(i) has no capabilities")
            #expect(m.fds.count == (fd ? 1 : 0), "region \(i) fds")
            #expect(m.header.messageSize == 48)
        }
        c.expectErrno(.EINVAL) { _ = try c.regionInfo(9) }

        // index: (count, flags)
        let irqs: [(UInt32, IRQInfoFlags)] = [
            (1, [.eventfd, .maskable, .automasked]),   // INTx pin A
            (4, [.eventfd, .maskable, .noresize]),     // MSI, 4 vectors
            (8, [.eventfd, .maskable]),                // MSI-X, 8 vectors
            (1, [.eventfd]),                           // ERR
            (0, []),                                   // REQ: none
        ]
        for (i, (count, flags)) in irqs.enumerated() {
            let q = try c.irqInfo(UInt32(i))
            #expect(q.index == UInt32(i))
            #expect(q.count == count, "irq \(i)")
            #expect(q.flags == flags, "irq \(i): flags \(q.flags.rawValue)")
        }
        c.expectErrno(.EINVAL) { _ = try c.irqInfo(5) }
    }

    @Test func regionInfoWithCapabilitiesNeedsAnArgszRetry() throws {
        let s = try InProcessServer(tag: "argsz") { device in
            device.addDeviceSpecificRegion(size: 4096, type: RegionType.pciVendor(0x1b36), subtype: 7,
                                           backing: .handler(ClosureRegionHandler(
                                               read: { _, n in [UInt8](repeating: 0xA5, count: n) }, write: { _, _ in })))
            device.updateRegion(2) { $0.sparseAreas = [SparseMmapArea(offset: 0x1000, size: 0x2000)] }
        }
        defer { s.stop() }
        let c = try s.client()
        #expect(try c.deviceInfo().numRegions == 10)

        // Device-specific region 9: a TYPE capability does not fit in argsz 32.
        let first = try c.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: 32, index: 9).encoded)
        let t = try RegionInfo(payload: Array(first.payload))
        #expect(first.header.messageSize == 48, "a truncated reply is exactly argsz")
        #expect(t.argsz == 48)
        #expect(!t.flags.contains(.caps) && t.capOffset == 0, "a truncated reply must not claim CAPS")
        #expect(t.size == 4096)
        #expect(first.fds.isEmpty)
        let full = try c.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: t.argsz, index: 9).encoded)
        let f = try RegionInfo(payload: Array(full.payload))
        #expect(f.argsz == 48 && f.flags.contains(.caps) && f.capOffset == 32)
        #expect(f.capabilities == [.type(type: RegionType.pciVendor(0x1b36), subtype: 7)])
        #expect(try c.read(region: 9, offset: 0, count: 4) == [0xA5, 0xA5, 0xA5, 0xA5])

        // BAR2 with a sparse area: the fd comes only with the complete reply.
        let b1 = try c.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: 32, index: 2).encoded)
        defer { b1.closeFDs() }
        let bt = try RegionInfo(payload: Array(b1.payload))
        #expect(bt.argsz == 32 + 16 + 16)
        #expect(bt.flags.contains(.mmap) && !bt.flags.contains(.caps))
        #expect(b1.fds.isEmpty, "no fd with a truncated reply")
        let b2 = try c.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: bt.argsz, index: 2).encoded)
        defer { b2.closeFDs() }
        let bf = try RegionInfo(payload: Array(b2.payload))
        #expect(bf.capabilities == [.sparseMmap([SparseMmapArea(offset: 0x1000, size: 0x2000)])])
        #expect(b2.fds.count == 1)

        // The library's retrying call agrees and maps the sparse area.
        let (info, mapping) = try c.mapRegion(2)
        #expect(info.argsz == bt.argsz)
        #expect(mapping.length == 0x2000)
    }

    // MARK: RAM BAR mmap

    @Test func theRAMBARIsSharedBetweenMmapAndRegionAccess() throws {
        let s = try InProcessServer(tag: "mmap")
        defer { s.stop() }
        let c = try s.client()
        c.expectErrno(.EIO) { _ = try c.read(region: 2, offset: 0, count: 4) }  // memory decode off
        try c.writeConfig16(0x04, Cmd.memory)
        let (info, mapping) = try c.mapRegion(2)
        #expect(info.size == 0x10_0000 && mapping.length == 0x10_0000)

        // Written through the mapping → read by REGION_READ.
        let pattern = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        #expect(mapping.write(at: 0x1230, pattern))
        #expect(try c.read(region: 2, offset: 0x1230, count: 64) == pattern)
        // Written by REGION_WRITE → seen through the mapping.
        let other = (0..<32).map { UInt8(truncatingIfNeeded: 0xF0 &- $0) }
        try c.write(region: 2, offset: 0xFFFE0, other)
        #expect(mapping.read(at: 0xFFFE0, count: 32) == other)
        // The last byte, and nothing past it.
        try c.write(region: 2, offset: 0xFFFFF, [0x5C])
        #expect(mapping.read(at: 0xFFFFF, count: 1) == [0x5C])
        c.expectErrno(.EINVAL) { _ = try c.read(region: 2, offset: 0xFFFFF, count: 2) }
        // The whole BAR in one message, and an empty access at its end.
        let whole = try c.read(region: 2, offset: 0, count: 0x10_0000)
        #expect(whole.count == 0x10_0000)
        #expect(whole == mapping.read(at: 0, count: 0x10_0000))
        #expect(try c.read(region: 2, offset: 0x10_0000, count: 0) == [])
        // Config space in one read, as QEMU does at realize.
        let cfg = try c.readConfig(offset: 0, count: 256)
        #expect(cfg.count == 256 && cfg.le16(at: 0) == 0x1b36)
    }

    // MARK: Registers

    @Test func registersFollowTheSpecValuesAndWriteMasks() throws {
        let s = try InProcessServer(tag: "regs")
        defer { s.stop() }
        let c = try s.client()
        // Config space identity (specs/default.json ids).
        #expect(try c.readConfig16(0x00) == 0x1b36)
        #expect(try c.readConfig16(0x02) == 0x0005)
        #expect(try c.readConfig(offset: 0x08, count: 4) == [0x02, 0x00, 0x00, 0xff])
        #expect(try c.readConfig16(0x2C) == 0x1af4)
        #expect(try c.readConfig16(0x2E) == 0x1100)
        #expect(try c.readConfig(offset: 0x3D, count: 1) == [1])
        try c.writeConfig16(0x00, 0xFFFF)
        #expect(try c.readConfig16(0x00) == 0x1b36, "vendor ID is read-only")

        // BAR registers need decode enabled.
        c.expectErrno(.EIO) { _ = try c.read32(region: 0, offset: 0x100) }
        c.expectErrno(.EIO) { _ = try c.read32(region: 4, offset: 0) }
        try c.writeConfig16(0x04, Cmd.memory | Cmd.io)
        #expect(try c.read32(region: 0, offset: 0x100) == 0xcafe_f00d)
        try c.write32(region: 0, offset: 0x100, 0)
        #expect(try c.read32(region: 0, offset: 0x100) == 0xcafe_f00d, "read-only register")
        #expect(try c.read32(region: 0, offset: 0x104) == 0)
        try c.write32(region: 0, offset: 0x104, 0x1357_9BDF)
        #expect(try c.read32(region: 0, offset: 0x104) == 0x1357_9BDF)
        #expect(try c.readConfig16(0x04) & 0x3 == 0x3)
        #expect(try c.read(region: 0, offset: 0x108, count: 2) == [0x34, 0x12])
        try c.write(region: 0, offset: 0x108, [0xCD, 0xAB])
        #expect(try c.read(region: 0, offset: 0x108, count: 2) == [0xCD, 0x12], "writeMask 0x00ff")
        #expect(try c.read32(region: 4, offset: 0) == 0x5a5a_0001)
        try c.write32(region: 4, offset: 0, 0x0BAD_CAFE)
        #expect(try c.read32(region: 4, offset: 0) == 0x0BAD_CAFE)
        // The doorbell model's identity registers.
        #expect(try Doorbell.read(c, Doorbell.magic) == 0x4455_4656)
        #expect(try Doorbell.read(c, Doorbell.version) == 0x0001_0000)
        // Past the end of the I/O BAR.
        c.expectErrno(.EINVAL) { _ = try c.read32(region: 4, offset: 30) }
    }

    @Test func postedWritesAreNeverAnsweredAndAreOrderedBeforeTheNextRead() throws {
        let s = try InProcessServer(tag: "posted")
        defer { s.stop() }
        let p = try RawPeer(path: s.path)
        try p.negotiate()
        let cmd = try p.call(.regionWrite, RegionAccess(offset: 4, region: 7, data: [UInt8(Cmd.memory), 0]).encoded)
        #expect(cmd.1.message.map { !$0.header.isError } == true)
        for v: UInt32 in [0x1111_1111, 0x2222_2222, 0xdead_beef] {
            var b = [UInt8](repeating: 0, count: 4)
            b.setLE32(v, at: 0)
            let posted = try p.send(.regionWrite, RegionAccess(offset: 0x104, region: 0, data: b).encoded,
                                    flags: MessageHeader.noReplyFlag)
            let read = try p.send(.regionRead, RegionAccess(offset: 0x104, region: 0, count: 4).encoded)
            let x = p.receive()
            let m = try #require(x.message)
            #expect(m.header.messageID == read, "next message is the read's reply, not #\(posted)'s")
            let a = try RegionAccess(payload: Array(m.payload))
            #expect(a.data == b, "the read sees the posted write")
        }
        // Pipelined commands are answered in order, posted writes in between unanswered.
        var ids: [UInt16] = []
        for k in 0..<40 {
            if k % 3 == 0 {
                try p.send(.regionWrite, RegionAccess(offset: 0x104, region: 0, data: [UInt8(k), 0, 0, 0]).encoded,
                           flags: MessageHeader.noReplyFlag)
            }
            ids.append(try p.send(.regionRead, RegionAccess(offset: 0x104, region: 0, count: 4).encoded))
        }
        var got: [UInt16] = []
        var values: [UInt8] = []
        for _ in ids {
            guard let m = p.receive().message else { break }
            got.append(m.header.messageID)
            values.append(m.bytes[32])
        }
        #expect(got == ids)
        #expect(values == (0..<40).map { UInt8($0 / 3 * 3) })
        // A posted write that fails is not answered either.
        let bad = try p.send(.regionWrite, RegionAccess(offset: 0x5000, region: 0, data: [1, 2, 3, 4]).encoded,
                             flags: MessageHeader.noReplyFlag)
        #expect(p.inSync(), "no error reply for failed posted write #\(bad)")
        #expect(p.receive(timeoutMs: 200).isTimeoutOrNothing)

        // The same through the client library, once the raw peer (the owner) has left
        // (which reset the device: memory decoding is off again).
        p.close()
        #expect(waitUntil { s.device.owner == nil })
        let c = try s.client()
        try c.writeConfig16(0x04, Cmd.memory)
        try c.write32(region: 0, offset: 0x104, 0x600D_F00D, posted: true)
        #expect(try c.read32(region: 0, offset: 0x104) == 0x600D_F00D)
    }

    @Test func writeMultiAppliesEveryEntryInOrder() throws {
        let s = try InProcessServer(tag: "wmulti")
        defer { s.stop() }
        var caps = VFIOUserClient.defaultCapabilities
        caps.writeMultiple = true
        let c = try s.client(capabilities: caps)
        #expect(c.serverCapabilities.writeMultiple == true)
        try c.writeConfig16(0x04, Cmd.memory)
        let req = WriteMulti(entries: [
            WriteMultiEntry(offset: 0x104, region: 0, count: 4, data: 0x1122_3344),
            WriteMultiEntry(offset: 0x104, region: 0, count: 1, data: 0xFF),        // later entry wins
            WriteMultiEntry(offset: 0x108, region: 0, count: 2, data: 0xFFFF_5678),  // writeMask 0x00ff
            WriteMultiEntry(offset: Doorbell.scratch, region: 0, count: 4, data: 0xDEAD_BEEF),
        ])
        let reply = try WriteMultiReply(payload: try c.call(.regionWriteMulti, payload: req.encoded))
        #expect(reply.completed == 4)
        #expect(try c.read32(region: 0, offset: 0x104) == 0x1122_33FF)
        #expect(try c.read(region: 0, offset: 0x108, count: 2) == [0x78, 0x12])
        #expect(try Doorbell.read(c, Doorbell.scratch) == 0xDEAD_BEEF)
        // Posted, as QEMU sends it.
        try c.post(.regionWriteMulti, payload: WriteMulti(entries: [
            WriteMultiEntry(offset: Doorbell.scratch, region: 0, count: 4, data: 0x0102_0304),
        ]).encoded)
        #expect(try Doorbell.read(c, Doorbell.scratch) == 0x0102_0304)
        // A bad entry count is EINVAL.
        c.expectErrno(.EINVAL) {
            try c.call(.regionWriteMulti, payload: WriteMulti(entries: [WriteMultiEntry(offset: 0, region: 0, count: 9, data: 0)]).encoded)
        }
    }

    @Test func deviceResetRestoresRegisters() throws {
        let s = try InProcessServer(tag: "reset")
        defer { s.stop() }
        let c = try s.client()
        try c.writeConfig16(0x04, Cmd.memory | Cmd.io | Cmd.busMaster)
        try c.writeConfig(0x3C, 0x0A)
        try c.write32(region: 0, offset: 0x104, 0xAAAA_5555)
        try c.write(region: 0, offset: 0x108, [0x99, 0x99])
        try c.write32(region: 4, offset: 0, 7)
        try c.write32(region: 0, offset: Doorbell.scratch, 0x5C5C_5C5C)
        try c.write32(region: 0, offset: Doorbell.irqVector, 3)
        #expect(try c.read32(region: 0, offset: 0x104) == 0xAAAA_5555)

        try c.reset()
        #expect(s.device.resetCount >= 1)
        #expect(try c.readConfig16(0x04) == 0, "command register back to 0")
        #expect(try c.readConfig(offset: 0x3C, count: 1) == [0xFF])
        c.expectErrno(.EIO) { _ = try c.read32(region: 0, offset: 0x104) }
        try c.writeConfig16(0x04, Cmd.memory | Cmd.io)
        #expect(try c.read32(region: 0, offset: 0x104) == 0)
        #expect(try c.read(region: 0, offset: 0x108, count: 2) == [0x34, 0x12])
        #expect(try c.read32(region: 4, offset: 0) == 0x5a5a_0001)
        #expect(try Doorbell.read(c, Doorbell.scratch) == 0)
        #expect(try Doorbell.read(c, Doorbell.irqVector) == 0)
        #expect(try Doorbell.read(c, Doorbell.magic) == 0x4455_4656)
    }

    // MARK: Interrupts

    @Test func setIRQsWithEventFDsDeliversMSIXThenMSIThenINTx() throws {
        let s = try InProcessServer(tag: "irqs")
        defer { s.stop() }
        let c = try s.client()
        try c.writeConfig16(0x04, Cmd.memory)

        // MSI-X vectors 0 and 5.
        let x0 = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 0, count: 1)[0]
        let x5 = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 5, count: 1)[0]
        try Doorbell.program(c, address: 0, length: 0, vector: 5)
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(x5.rawValue, timeoutMs: 2000) == 1)
        #expect(EventFD.wait(x0.rawValue, timeoutMs: 20) == 0)
        try c.write32(region: 0, offset: Doorbell.irqVector, 0)
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(x0.rawValue, timeoutMs: 2000) == 1)
        #expect(try Doorbell.read(c, Doorbell.irqCount) == 2)
        #expect(try Doorbell.read(c, Doorbell.completions) == 2)
        // Masked vector: pending, delivered on unmask.
        try c.maskIRQ(index: IRQIndex.msix.rawValue, vector: 0, masked: true)
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(x0.rawValue, timeoutMs: 50) == 0)
        try c.maskIRQ(index: IRQIndex.msix.rawValue, vector: 0, masked: false)
        #expect(EventFD.wait(x0.rawValue, timeoutMs: 2000) == 1)
        try c.disableIRQs(index: IRQIndex.msix.rawValue)

        // MSI vector 2 of 4.
        let msi = try c.enableEventFDs(index: IRQIndex.msi.rawValue, start: 0, count: 4)
        try c.write32(region: 0, offset: Doorbell.irqVector, 2)
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(msi[2].rawValue, timeoutMs: 2000) == 1)
        for k in [0, 1, 3] { #expect(EventFD.wait(msi[k].rawValue, timeoutMs: 10) == 0) }
        #expect(EventFD.wait(x0.rawValue, timeoutMs: 10) == 0, "MSI-X was disabled")
        try c.disableIRQs(index: IRQIndex.msi.rawValue)

        // INTx: level-triggered and automasked.
        let intx = try c.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)[0]
        try c.write32(region: 0, offset: Doorbell.irqVector, 0)
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(intx.rawValue, timeoutMs: 2000) == 1)
        #expect(try c.readConfig16(0x06) & 0x08 != 0, "status shows the pending INTx")
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(intx.rawValue, timeoutMs: 50) == 0, "automasked until UNMASK")
        try c.write32(region: 0, offset: Doorbell.irqAck, 1)
        #expect(try c.readConfig16(0x06) & 0x08 == 0)
        try c.maskIRQ(index: IRQIndex.intx.rawValue, vector: 0, masked: false)
        #expect(EventFD.wait(intx.rawValue, timeoutMs: 50) == 0, "the line is low")
        try Doorbell.ring(c, Doorbell.interrupt)
        #expect(EventFD.wait(intx.rawValue, timeoutMs: 2000) == 1)

        // ERR: loopback trigger (NONE|TRIGGER count 1) fires the bound eventfd.
        let err = try c.enableEventFDs(index: IRQIndex.err.rawValue, count: 1)[0]
        try c.setIRQs(index: IRQIndex.err.rawValue, flags: [.dataNone, .actionTrigger], start: 0, count: 1)
        #expect(EventFD.wait(err.rawValue, timeoutMs: 2000) == 1)
        // REQ has no vectors.
        c.expectErrno(.EINVAL) { _ = try c.enableEventFDs(index: IRQIndex.req.rawValue, count: 1) }
    }
}

extension Incoming {
    /// Nothing arrived (timeout) — used after sequences that must not produce a message.
    var isTimeoutOrNothing: Bool { if case .timeout = self { true } else { false } }
}

extension VFIOUserClient {
    func writeConfig(_ offset: UInt64, _ byte: UInt8) throws {
        try write(region: RegionIndex.config.rawValue, offset: offset, [byte])
    }
}
