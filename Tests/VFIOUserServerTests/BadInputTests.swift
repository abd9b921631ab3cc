import Glibc
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// Malformed and hostile input against a `vfu serve` subprocess, each on its own
/// real connection. After every case the server is still running, accepts a new
/// client and answers it; where the connection stays open, the very next valid
/// request on it gets its own reply (the stream is in sync).
@Suite struct BadInputTests {
    /// Runs `body` against a fresh subprocess and checks it survived.
    func withServer(_ tag: String, _ body: (ServedDevice) throws -> Void) throws {
        let s = try ServedDevice(tag: tag)
        defer { s.stop() }
        try body(s)
        #expect(s.process.isAlive, "server died: \(String(describing: s.process.status)); stderr: \(s.process.stderr)")
        #expect(s.stillServes(), "a new client is served after the bad input")
    }

    func negotiatedPeer(_ s: ServedDevice) throws -> RawPeer {
        let p = try RawPeer(path: s.path)
        try p.negotiate()
        return p
    }

    func eventFDs(_ n: Int) throws -> [OwnedFD] { try (0..<n).map { _ in try EventFD.create() } }

    // MARK: Framing

    @Test func aShortHeaderThenCloseIsDropped() throws {
        try withServer("shorthdr") { s in
            let p = try negotiatedPeer(s)
            try p.sendRaw(Array(MessageHeader(messageID: 5, command: .deviceGetInfo, messageSize: 32).bytes.prefix(9)))
            _ = Glibc.shutdown(p.socket.fd.rawValue, Int32(SHUT_WR))
            let x = p.receive()
            #expect(x.isClosed, "\(x)")
        }
    }

    @Test func msgSizeBelow16IsRefusedAndTheConnectionClosed() throws {
        try withServer("small") { s in
            let p = try negotiatedPeer(s)
            try p.sendRaw(MessageHeader(messageID: 9, command: .deviceGetInfo, messageSize: 8).bytes)
            let x = p.receive()
            #expect(errorNumber(x) == 22, "\(x)")
            #expect(x.message?.header.messageID == 9)
            #expect(p.receive().isClosed, "framing lost: the server closes")
        }
    }

    @Test func msgSizeAboveTheMaximumIsRefusedAndTheConnectionClosed() throws {
        try withServer("big") { s in
            for size: UInt32 in [(1 << 20) + 64 + 1, 0xFFFF_FFF0] {
                let p = try negotiatedPeer(s)
                try p.sendRaw(MessageHeader(messageID: 10, command: .regionWrite, messageSize: size).bytes)
                let x = p.receive()
                #expect(errorNumber(x) == 22, "msg_size \(size): \(x)")
                #expect(p.receive().isClosed, "msg_size \(size)")
            }
            // A message of the largest legal size is read whole: a 1 MiB BAR2 write (refused
            // with EIO because memory decode is off) leaves the stream in sync.
            let p = try negotiatedPeer(s)
            let (_, x) = try p.call(.regionWrite, RegionAccess(offset: 0, region: 2, data: [UInt8](repeating: 1, count: 1 << 20)).encoded)
            #expect(errorNumber(x) == 5, "BAR2 decode is off: EIO, \(x)")
            #expect(p.inSync())
        }
    }

    @Test func aTruncatedBodyThenCloseIsDropped() throws {
        try withServer("shortbody") { s in
            let p = try negotiatedPeer(s)
            var bytes = MessageHeader(messageID: 11, command: .deviceGetRegionInfo, messageSize: 48).bytes
            bytes += [32, 0, 0, 0, 0, 0, 0, 0, 2, 0]  // 10 of 32 payload bytes
            try p.sendRaw(bytes)
            _ = Glibc.shutdown(p.socket.fd.rawValue, Int32(SHUT_WR))
            let x = p.receive()
            #expect(x.isClosed, "no reply to half a message: \(x)")
        }
    }

    // MARK: Commands

    @Test func anUnknownCommandIsEINVALAsTV7() throws {
        try withServer("unknown") { s in
            let p = try negotiatedPeer(s)
            try p.sendRaw([0x04, 0x00, 0x63, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
            let x = p.receive()
            let tv7: [UInt8] = [0x04, 0x00, 0x63, 0x00, 0x10, 0x00, 0x00, 0x00, 0x21, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00]
            #expect(x.message?.bytes == tv7, "\(x)")
            #expect(p.inSync())
            // With a payload, and the server→client-only commands, too.
            for cmd: UInt16 in [99, 0xFFFF, 11, 12, 14] {
                let (id, y) = try p.call(Command(cmd), [1, 2, 3, 4, 5, 6, 7, 8])
                #expect(errorNumber(y) == 22 && y.message?.header.messageID == id, "command \(cmd): \(y)")
            }
            #expect(p.inSync())
        }
    }

    @Test func aRequestWithTheReplyFlagIsRefused() throws {
        try withServer("replyflag") { s in
            let p = try negotiatedPeer(s)
            let (id, x) = try p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, flags: 1)
            #expect(errorNumber(x) == 22, "\(x)")
            #expect(x.message?.header.messageID == id)
            #expect(p.inSync())
            // Invalid type bits (neither command nor reply): refused, connection closed.
            let q = try negotiatedPeer(s)
            let (_, y) = try q.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, flags: 2)
            #expect(errorNumber(y) == 22, "\(y)")
            #expect(q.receive().isClosed)
        }
    }

    @Test func regionAccessPastTheEndOrOverflowingIsEINVAL() throws {
        try withServer("bounds") { s in
            let p = try negotiatedPeer(s)
            _ = try p.call(.regionWrite, RegionAccess(offset: 4, region: 7, data: [UInt8(Cmd.memory | Cmd.io), 0]).encoded)
            let cases: [(UInt64, UInt32, UInt32)] = [
                (254, 7, 4),                      // config: 2 bytes past 256
                (256, 7, 1),
                (0x1000, 0, 1),                   // BAR0 4 KiB
                (0xFFC, 0, 8),
                (28, 4, 8),                       // I/O BAR 32 bytes
                (0, 1, 4),                        // BAR1 does not exist
                (0, 9, 4),                        // no such region
                (0xFFFF_FFFF_FFFF_FFF0, 7, 32),   // offset + count overflows
                (0xFFFF_FFFF_FFFF_FFF0, 0, 32),
                (0xFFFF_FFFF_FFFF_FFFF, 2, 1),
            ]
            for (offset, region, count) in cases {
                let (id, x) = try p.call(.regionRead, RegionAccess(offset: offset, region: region, count: count).encoded)
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "read \(region)@0x\(String(offset, radix: 16))+\(count): \(x)")
                let data = [UInt8](repeating: 0xAB, count: Int(count))
                let (wid, y) = try p.call(.regionWrite, RegionAccess(offset: offset, region: region, data: data).encoded)
                #expect(errorNumber(y) == 22 && y.message?.header.messageID == wid, "write \(region)@0x\(String(offset, radix: 16))+\(count): \(y)")
                #expect(p.inSync())
            }
            // A write whose count disagrees with its data, and a read with a short payload.
            let (_, w) = try p.call(.regionWrite, RegionAccess(offset: 0, region: 7, count: 8, data: [1, 2, 3, 4]).encoded)
            #expect(errorNumber(w) == 22, "\(w)")
            let (_, r) = try p.call(.regionRead, [0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0])
            #expect(errorNumber(r) == 22, "\(r)")
            // count above max_data_xfer_size.
            let (_, big) = try p.call(.regionRead, RegionAccess(offset: 0, region: 2, count: (1 << 20) + 1).encoded)
            #expect(errorNumber(big) == 22, "\(big)")
            #expect(p.inSync())
        }
    }

    @Test func setIRQsPastTheIRQCountIsEINVALAndItsFDsAreClosed() throws {
        try withServer("irqcount") { s in
            let p = try negotiatedPeer(s)
            let baseline = s.process.stableFDCount()
            let cases: [(UInt32, UInt32, UInt32)] = [(2, 7, 2), (2, 8, 1), (1, 4, 1), (0, 0, 2), (4, 0, 1), (5, 0, 1), (0xFFFF_FFFF, 0, 1),
                                                     (2, 0xFFFF_FFFF, 2)]
            for (index, start, count) in cases {
                let fds = try eventFDs(Int(min(count, 2)))
                let req = SetIRQs(flags: [.dataEventFD, .actionTrigger], index: index, start: start, count: count)
                let (id, x) = try p.call(.deviceSetIRQs, req.encoded, fds: fds.map(\.rawValue))
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "index \(index) start \(start) count \(count): \(x)")
                #expect(s.process.fdCount(settlingTo: baseline) == baseline, "the rejected eventfds were closed")
                #expect(p.inSync())
            }
            // The wrong number of fds for the count.
            let fds = try eventFDs(3)
            let (_, x) = try p.call(.deviceSetIRQs, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 2).encoded,
                                    fds: fds.map(\.rawValue))
            #expect(errorNumber(x) == 22, "\(x)")
            #expect(s.process.fdCount(settlingTo: baseline) == baseline)
            // And a valid one keeps its fd (one more open in the server) until disabled.
            let (_, ok) = try p.call(.deviceSetIRQs, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 7, count: 1).encoded,
                                     fds: [fds[0].rawValue])
            #expect(ok.message.map { !$0.header.isError } == true, "\(ok)")
            #expect(s.process.fdCount == baseline + 1)
            _ = try p.call(.deviceSetIRQs, SetIRQs(flags: [.dataNone, .actionTrigger], index: 2, start: 0, count: 0).encoded)
            #expect(s.process.fdCount(settlingTo: baseline) == baseline)
        }
    }

    @Test func fdsWhereNoneAreExpectedAreRefusedAndClosed() throws {
        try withServer("strayfds") { s in
            let p = try negotiatedPeer(s)
            let baseline = s.process.stableFDCount()
            let efds = try eventFDs(3)
            let mem = try MemFD.create(name: "stray", size: 4096)
            let cases: [(Command, [UInt8], [Int32])] = [
                (.deviceGetInfo, DeviceInfo(argsz: 16).encoded, efds.map(\.rawValue)),
                (.regionRead, RegionAccess(offset: 0, region: 7, count: 4).encoded, [mem.rawValue]),
                (.deviceGetRegionInfo, RegionInfoRequest(argsz: 32, index: 2).encoded, [efds[0].rawValue]),
                (.deviceReset, [], [efds[1].rawValue]),
                (.dmaUnmap, DMAUnmapRequest(flags: .all, address: 0, size: 0).encoded, [mem.rawValue]),
                // DMA_MAP takes at most one fd.
                (.dmaMap, DMAMapRequest(flags: [.read, .write], offset: 0, address: 0x10000, size: 4096).encoded,
                 [mem.rawValue, mem.rawValue]),
                // SET_IRQS fds only with DATA_EVENTFD.
                (.deviceSetIRQs, SetIRQs(flags: [.dataNone, .actionTrigger], index: 2, start: 0, count: 1).encoded, [efds[2].rawValue]),
            ]
            for (cmd, payload, fds) in cases {
                let (id, x) = try p.call(cmd, payload, fds: fds)
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "\(cmd) with \(fds.count) fds: \(x)")
                #expect(s.process.fdCount(settlingTo: baseline) == baseline, "\(cmd): the stray fds were closed")
                #expect(p.inSync())
            }
            // Even with NO_REPLY nothing is answered and nothing is kept.
            try p.send(.regionWrite, RegionAccess(offset: 0x3C, region: 7, data: [1]).encoded, flags: MessageHeader.noReplyFlag,
                       fds: efds.map(\.rawValue))
            #expect(p.inSync())
            #expect(s.process.fdCount(settlingTo: baseline) == baseline)
            // The device was not reset by the rejected DEVICE_RESET and the rejected write did not land.
            let (_, line) = try p.call(.regionRead, RegionAccess(offset: 0x3C, region: 7, count: 1).encoded)
            #expect(line.message.flatMap { try? RegionAccess(payload: Array($0.payload)) }?.data == [0xFF])
        }
    }

    @Test func moreFDsThanMaxMsgFDsAreRefusedAndClosed() throws {
        try withServer("manyfds") { s in
            let p = try negotiatedPeer(s)
            let baseline = s.process.stableFDCount()
            for n in [17, 64, 253] {
                let fds = try eventFDs(n)
                let (id, x) = try p.call(.deviceSetIRQs, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 8).encoded,
                                         fds: fds.map(\.rawValue))
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "\(n) fds: \(x)")
                #expect(s.process.fdCount(settlingTo: baseline) == baseline, "\(n) fds: all closed")
                #expect(p.inSync())
            }
            // Exactly max_msg_fds (16) is fine when the request wants them... MSI-X has 8 vectors,
            // so 8 is the most a real request carries; 16 fds for count 8 is EINVAL but also closed.
            let fds = try eventFDs(16)
            let (_, x) = try p.call(.deviceSetIRQs, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 8).encoded,
                                    fds: fds.map(\.rawValue))
            #expect(errorNumber(x) == 22, "\(x)")
            #expect(s.process.fdCount(settlingTo: baseline) == baseline)
            #expect(p.inSync())
        }
    }

    @Test func shortOrInconsistentPayloadsAreEINVALAndTheStreamStaysInSync() throws {
        try withServer("payloads") { s in
            let p = try negotiatedPeer(s)
            let cases: [(String, Command, [UInt8])] = [
                ("GET_INFO argsz 8", .deviceGetInfo, DeviceInfo(argsz: 8).encoded),
                ("GET_INFO no payload", .deviceGetInfo, []),
                ("GET_REGION_INFO argsz 16", .deviceGetRegionInfo, RegionInfoRequest(argsz: 16, index: 0).encoded),
                ("GET_REGION_INFO short", .deviceGetRegionInfo, [32, 0, 0, 0, 0, 0, 0, 0]),
                ("GET_IRQ_INFO short", .deviceGetIRQInfo, [16, 0, 0, 0]),
                ("SET_IRQS two actions", .deviceSetIRQs,
                 SetIRQs(flags: [.dataNone, .actionMask, .actionTrigger], index: 2, start: 0, count: 1).encoded),
                ("SET_IRQS two data types", .deviceSetIRQs,
                 SetIRQs(flags: [.dataNone, .dataBool, .actionTrigger], index: 2, start: 0, count: 1).encoded),
                ("SET_IRQS BOOL without its data", .deviceSetIRQs,
                 SetIRQs(argsz: 20, flags: [.dataBool, .actionTrigger], index: 2, start: 0, count: 4).encoded),
                ("SET_IRQS disable with start 1", .deviceSetIRQs,
                 SetIRQs(flags: [.dataNone, .actionTrigger], index: 2, start: 1, count: 0).encoded),
                ("SET_IRQS ERR mask", .deviceSetIRQs, SetIRQs(flags: [.dataNone, .actionMask], index: 3, start: 0, count: 1).encoded),
                ("DMA_MAP short", .dmaMap, [32, 0, 0, 0, 3, 0, 0, 0]),
                ("DMA_MAP argsz 16", .dmaMap, DMAMapRequest(argsz: 16, flags: [.read], offset: 0, address: 0x1000, size: 0x1000).encoded),
                ("DMA_MAP fd-less with unknown flags", .dmaMap,
                 DMAMapRequest(flags: DMAMapFlags(rawValue: 0x13), offset: 0, address: 0x1000, size: 0x1000).encoded),
                ("DMA_UNMAP short", .dmaUnmap, [24, 0, 0, 0]),
                ("DMA_UNMAP unknown flags", .dmaUnmap, DMAUnmapRequest(flags: DMAUnmapFlags(rawValue: 0x8), address: 0, size: 0x1000).encoded),
                ("WRITE_MULTI count beyond the payload", .regionWriteMulti, [200, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 24)),
                ("WRITE_MULTI no entries", .regionWriteMulti, [0, 0, 0, 0, 0, 0, 0, 0]),
                ("DEVICE_FEATURE short", .deviceFeature, [8, 0]),
            ]
            for (name, cmd, payload) in cases {
                let (id, x) = try p.call(cmd, payload)
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "\(name): \(x)")
                #expect(p.inSync(), "\(name)")
            }
        }
    }

    /// A REGION_READ whose header claims 48 bytes swallowed the start of the next
    /// request: it is refused and the connection closes before the rest of that request
    /// is read as a header; nothing is answered to a message that was never sent.
    @Test func aRequestLongerThanItsLayoutIsRefusedAndTheConnectionClosed() throws {
        try withServer("long") { s in
            let p = try negotiatedPeer(s)
            let next = encodeMessage(MessageHeader(messageID: 0x77, command: .regionRead, messageSize: 0),
                                     payload: RegionAccess(offset: 0, region: 7, count: 4))
            var first = encodeMessage(MessageHeader(messageID: 0x66, command: .regionRead, messageSize: 0),
                                      payload: RegionAccess(offset: 0, region: 7, count: 4))
            first += next.prefix(16)
            first.setLE32(48, at: 4)   // msg_size covers the next request's header
            try p.sendRaw(first + next.dropFirst(16))
            let x = p.receive()
            #expect(errorNumber(x) == 22 && x.message?.header.messageID == 0x66, "\(x)")
            #expect(p.receive().isClosed, "closed, without answering the rest as a message")
            // Every fixed-layout command, one byte too long, from fresh connections.
            for (cmd, payload) in [(Command.dmaUnmap, DMAUnmapRequest(address: 0, size: 0x1000).encoded),
                                   (.deviceGetIRQInfo, IRQInfo(index: 0).encoded), (.deviceReset, []),
                                   (.regionWrite, RegionAccess(offset: 0, region: 7, data: [0]).encoded)] {
                let q = try negotiatedPeer(s)
                let (id, r) = try q.call(cmd, payload + [0])
                #expect(errorNumber(r) == 22 && r.message?.header.messageID == id, "\(cmd): \(r)")
                #expect(q.receive().isClosed, "\(cmd): closed")
            }
        }
    }

    /// Requests pipelined in one write, and the same bytes split at every offset, are
    /// all answered in order.
    @Test func pipelinedAndSplitRequestsAreAnsweredInOrder() throws {
        try withServer("split") { s in
            let p = try negotiatedPeer(s)
            var stream: [UInt8] = []
            let ids: [UInt16] = (0..<3).map { 0x200 + $0 }
            for id in ids {
                stream += encodeMessage(MessageHeader(messageID: id, command: .regionRead, messageSize: 0),
                                        payload: RegionAccess(offset: 0, region: 7, count: 4))
            }
            func answered() -> [UInt16] { ids.compactMap { _ in p.receive().message.map { $0.header.messageID } } }
            try p.sendRaw(stream)
            #expect(answered() == ids)
            for cut in 1..<stream.count {
                try p.sendRaw(Array(stream[..<cut]))
                try p.sendRaw(Array(stream[cut...]))
                #expect(answered() == ids, "split at \(cut)")
            }
            #expect(p.inSync())
        }
    }

    // MARK: VERSION

    @Test func aSecondVersionIsEINVALAndTheConnectionLivesOn() throws {
        try withServer("version2") { s in
            let p = try negotiatedPeer(s)
            let (id, x) = try p.call(.version, VersionPayload(major: 0, minor: 0, capabilities: VFIOUserClient.defaultCapabilities).encoded)
            #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "\(x)")
            #expect(p.inSync())
        }
    }

    @Test func aFirstMessageOtherThanVersionIsEINVALThenClosed() throws {
        try withServer("notfirst") { s in
            for (cmd, payload) in [(Command.deviceGetInfo, DeviceInfo(argsz: 16).encoded),
                                   (.regionRead, RegionAccess(offset: 0, region: 7, count: 4).encoded),
                                   (Command(99), [])] {
                let p = try RawPeer(path: s.path)
                let (id, x) = try p.call(cmd, payload)
                #expect(errorNumber(x) == 22 && x.message?.header.messageID == id, "\(cmd) first: \(x)")
                #expect(p.receive().isClosed, "\(cmd) first: closed after the error")
            }
            // Malformed VERSIONs: bad major, no NUL, not JSON, fds attached → EINVAL then close.
            let efd = try EventFD.create()
            let bad: [([UInt8], [Int32])] = [
                (VersionPayload(major: 1, minor: 0, capabilities: nil).encoded, []),
                ([0, 0, 0, 0] + Array(#"{"capabilities":{}}"#.utf8), []),
                ([0, 0, 0, 0] + Array("not json".utf8) + [0], []),
                ([0, 0, 0, 0] + Array(#"{"capabilities":{"max_msg_fds":5000}}"#.utf8) + [0], []),
                ([0, 0], []),
                (VersionPayload(major: 0, minor: 0, capabilities: VFIOUserClient.defaultCapabilities).encoded, [efd.rawValue]),
            ]
            let baseline = s.process.stableFDCount()
            for (payload, fds) in bad {
                let p = try RawPeer(path: s.path)
                let (_, x) = try p.call(.version, payload, fds: fds)
                #expect(errorNumber(x) == 22, "VERSION \(payload.prefix(8)): \(x)")
                #expect(p.receive().isClosed)
            }
            #expect(s.process.fdCount(settlingTo: baseline) == baseline, "the VERSION's fd and the connections are gone")
        }
    }
}
