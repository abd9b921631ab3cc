import Glibc
import Testing
import VFIOUserProtocol
@testable import VFIOUserTransport

/// The buffered reader: messages that arrive together are taken apart exactly, fds
/// stay with the message they were sent with, and the in-place API (peek, slice,
/// receive into place) moves the same bytes `receive` would.
@Suite struct BufferedReceiveTests {
    @Test func messagesThatArriveTogetherComeOutOneByOne() throws {
        let (a, b) = try MessageSocket.pair()
        // Three messages in one send: one recvmsg brings them all in.
        let joined = message(.deviceGetInfo, id: 1, payload: [1, 2, 3, 4]) + message(.deviceReset, id: 2)
            + message(.regionRead, id: 3, payload: [UInt8](repeating: 9, count: 16))
        try a.send(joined)
        let m1 = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 4))
        let m2 = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 4))
        let m3 = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 4))
        #expect([m1.header.messageID, m2.header.messageID, m3.header.messageID] == [1, 2, 3])
        #expect(Array(m1.payload) == [1, 2, 3, 4])
        #expect(m2.payload.isEmpty)
        #expect(Array(m3.payload) == [UInt8](repeating: 9, count: 16))
        a.shutdown()
        #expect(try b.receive(maxMessageSize: 4096, maxFDs: 4) == nil)
    }

    @Test func fdsStayWithTheirMessageWhenMessagesArriveTogether() throws {
        let (a, b) = try MessageSocket.pair()
        let efds = try (0..<2).map { _ in try EventFD.create(nonBlocking: true) }
        // No fds, then fds, then none: all queued before the reader reads anything.
        try a.send(message(.deviceGetInfo, id: 1, payload: [0, 0, 0, 0]))
        try a.send(message(.deviceSetIRQs, id: 2, payload: [UInt8](repeating: 0, count: 20)), fds: efds.map(\.rawValue))
        try a.send(message(.deviceGetInfo, id: 3, payload: [0, 0, 0, 0]))
        var got: [(UInt16, Int)] = []
        for _ in 0..<3 {
            let m = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 4))
            got.append((m.header.messageID, m.fds.count))
            if m.header.messageID == 2 {
                EventFD.signal(m.fds[1].rawValue, value: 3)
                #expect(EventFD.read(efds[1].rawValue) == 3)
            }
            m.closeFDs()
        }
        #expect(got.map(\.0) == [1, 2, 3])
        #expect(got.map(\.1) == [0, 2, 0])
    }

    @Test func peekedMessagesAreSlicesOfTheBuffer() throws {
        let (a, b) = try MessageSocket.pair()
        let payload = (0..<40).map { UInt8($0) }
        try a.send(message(.regionWrite, id: 7, payload: payload) + message(.deviceReset, id: 8))
        let (h, hasFDs) = try #require(try b.peekMessage(maxMessageSize: 4096, maxFDs: 0, prefix: 32))
        #expect(h.messageID == 7 && !hasFDs)
        #expect(b.waitReadable(timeoutMs: 0))
        // Peeking does not consume: the same message comes out of receive.
        let again = try #require(try b.peekMessage(maxMessageSize: 4096, maxFDs: 0, prefix: .max))
        #expect(again.header == h)
        #expect(Array(b.buffered.prefix(Int(h.messageSize)).dropFirst(16)) == payload)
        b.consumeMessage(size: Int(h.messageSize))
        let next = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 0))
        #expect(next.header.messageID == 8)
    }

    @Test func aLargeBodyIsReceivedIntoPlace() throws {
        let (a, b) = try MessageSocket.pair()
        let body = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let sender = Thread {
            try? a.send(header: MessageHeader(messageID: 5, command: .regionWrite, messageSize: 0),
                        payload: [UInt8](repeating: 0xEE, count: 16) + body)
            try? a.send(message(.deviceReset, id: 6))
        }
        let (h, _) = try #require(try b.peekMessage(maxMessageSize: 2 << 20, maxFDs: 0, prefix: 32))
        #expect(Int(h.messageSize) == 32 + body.count)
        var dst = [UInt8](repeating: 0, count: body.count)
        try dst.withUnsafeMutableBytes { try b.receiveBody(size: Int(h.messageSize), skip: 32, into: $0) }
        #expect(dst == body)
        let next = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 0))
        sender.join()
        #expect(next.header.messageID == 6)
    }
}
