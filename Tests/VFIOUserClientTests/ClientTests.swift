import Glibc
import Synchronization
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// The client library against a scripted server on the other end of a real Unix
/// socketpair: what it sends, how it negotiates, how it serves the server's DMA
/// requests during a call, and how it fails (errors, silence, hang-ups), bounded.
@Suite struct ClientTests {
    /// A client and the server end of its socket; `script` runs as the server on its
    /// own thread and reports a failure string, or nil.
    func withPeer(capabilities: VersionCapabilities = VFIOUserClient.defaultCapabilities,
                  _ script: @escaping @Sendable (MessageSocket) throws -> Void,
                  _ body: (VFIOUserClient) throws -> Void) throws {
        let (mine, theirs) = try MessageSocket.pair()
        let client = VFIOUserClient(socket: mine, capabilities: capabilities)
        let done = Completion<String?>()
        spawnThread(name: "scripted-server") {
            do { try script(theirs); done.fulfil(nil) } catch { done.fulfil("\(error)") }
        }
        try body(client)
        client.close()
        let failure = done.wait(timeoutMs: 10_000) ?? "the scripted server did not finish"
        #expect(failure == nil, "\(failure ?? "")")
        theirs.fd.close()
    }

    static func next(_ s: MessageSocket) throws -> ReceivedMessage {
        guard s.waitReadable(timeoutMs: 5000), let m = try s.receive(maxMessageSize: 1 << 21, maxFDs: 16) else {
            throw TestFailure("no message from the client")
        }
        return m
    }

    static func reply(_ s: MessageSocket, to m: ReceivedMessage, _ payload: [UInt8]) throws {
        try s.send(header: .reply(to: m.header, payloadSize: payload.count), payload: payload)
    }

    @Test func negotiationSendsNULTerminatedJSONAndReadsTheServersCapabilities() throws {
        try withPeer({ s in
            let m = try Self.next(s)
            guard m.header.command == .version, !m.header.isReply else { throw TestFailure("first message \(m.header.command)") }
            let req = try VersionPayload(payload: Array(m.payload))
            guard req.major == 0, req.minor == 0, m.payload.last == 0 else { throw TestFailure("request \(req), last byte \(m.payload.last ?? 0xFF)") }
            guard req.capabilities?.maxDataXferSize == 1 << 20 else { throw TestFailure("capabilities \(String(describing: req.capabilities))") }
            try Self.reply(s, to: m, VersionPayload(major: 0, minor: 0, capabilities: VersionCapabilities(maxMsgFDs: 8, maxDataXferSize: 65536)).encoded)
        }) { c in
            try c.negotiate()
            #expect(c.serverCapabilities.maxMsgFDs == 8)
            #expect(c.serverCapabilities.effectiveMaxDataXferSize == 65536)
        }
    }

    @Test func aServerOfAnotherMajorVersionIsRefused() throws {
        try withPeer({ s in
            let m = try Self.next(s)
            try Self.reply(s, to: m, VersionPayload(major: 1, minor: 0, capabilities: nil).encoded)
        }) { c in
            #expect(throws: ClientError.self) { try c.negotiate() }
        }
    }

    @Test func anErrorReplyBecomesTheServersErrnoAndAStrayReplyIsSkipped() throws {
        try withPeer({ s in
            let m = try Self.next(s)
            // A reply to a message the client never sent comes first: it must be ignored.
            try s.send(header: MessageHeader(messageID: m.header.messageID &+ 100, command: .deviceGetInfo, messageSize: 0, flags: 1),
                       payload: DeviceInfo(argsz: 16, flags: [.pci], numRegions: 99, numIRQs: 5).encoded)
            try s.send(header: .errorReply(to: m.header, errno: .ENODEV), payload: [])
        }) { c in
            #expect(throws: ClientError.server(.deviceGetInfo, .ENODEV)) { _ = try c.deviceInfo() }
        }
    }

    @Test func theClientServesTheServersDMAWhileItWaitsForItsReply() throws {
        let memory = try ClientMemory(size: 8192)
        memory.write(at: 0x100, [1, 2, 3, 4])
        try withPeer({ s in
            let map = try Self.next(s)
            guard map.header.command == .dmaMap, map.fds.isEmpty else { throw TestFailure("expected an fd-less DMA_MAP") }
            try Self.reply(s, to: map, [])
            let read = try Self.next(s)
            // Before answering the REGION_READ: read and write the client's memory.
            try s.send(header: MessageHeader(messageID: 7, command: .dmaRead, messageSize: 0),
                       payload: DMAAccess(address: 0x10_0100, count: 4).encoded)
            let r = try Self.next(s)
            guard r.header.isReply, r.header.messageID == 7, try DMAAccess.decodeDMAReadReply(Array(r.payload), expectedCount: 4).data == [1, 2, 3, 4] else {
                throw TestFailure("DMA_READ reply \(r.header)")
            }
            try s.send(header: MessageHeader(messageID: 8, command: .dmaWrite, messageSize: 0),
                       payload: DMAAccess(address: 0x10_0200, count: 2, data: [9, 9]).encoded)
            guard try Self.next(s).header.messageID == 8 else { throw TestFailure("DMA_WRITE not answered") }
            // Outside the mapping: refused with EFAULT, not served.
            try s.send(header: MessageHeader(messageID: 9, command: .dmaRead, messageSize: 0),
                       payload: DMAAccess(address: 0x20_0000, count: 4).encoded)
            let bad = try Self.next(s)
            guard bad.header.isError, bad.header.errorNumber == VFIOErrno.EFAULT.rawValue else { throw TestFailure("out of range: \(bad.header)") }
            try Self.reply(s, to: read, RegionAccess(offset: 0, region: 0, data: [0xAB, 0, 0, 0]).encoded)
        }) { c in
            try c.dmaMapWithoutFD(memory, address: 0x10_0000)
            #expect(try c.read32(region: 0, offset: 0) == 0xAB)
            #expect(c.servedDMAReads == 1 && c.servedDMAWrites == 1)
            #expect(memory.read(at: 0x200, count: 2) == [9, 9])
        }
    }

    @Test func aSilentServerTimesOutAndOneThatHangsUpIsDisconnected() throws {
        try withPeer({ s in
            _ = try Self.next(s)   // never answered
            _ = try Self.next(s)
            s.shutdown()
        }) { c in
            c.timeoutMs = 300
            #expect(throws: ClientError.timeout(.deviceGetInfo)) { _ = try c.deviceInfo() }
            c.timeoutMs = 5000
            #expect(throws: ClientError.disconnected) { _ = try c.deviceInfo() }
        }
    }
}
