import Testing
import VFIOUserCapture
import VFIOUserProtocol

/// The pcapng writer and reader, and the pseudo-header every packet carries.
@Suite struct PcapngTests {
    @Test func theFileStartsWithASectionAndOneUser0InterfaceInMicroseconds() {
        let h = Pcapng.fileHeader(snapLength: 4096)
        #expect(h.le32(at: 0) == 0x0A0D_0D0A, "section header block")
        #expect(h.le32(at: 8) == 0x1A2B_3C4D, "little-endian byte-order magic")
        let shbLength = Int(h.le32(at: 4))
        #expect(h.le32(at: shbLength - 4) == UInt32(shbLength), "trailing length repeats")
        let idb = Array(h[shbLength...])
        #expect(idb.le32(at: 0) == 1, "interface description block")
        #expect(idb.le16(at: 8) == 147, "LINKTYPE_USER0")
        #expect(idb.le32(at: 12) == 4096, "snap length")
        // if_tsresol (9) = 6: microseconds.
        let options = Array(idb[16 ..< Int(idb.le32(at: 4)) - 4])
        var at = 0, tsresol: UInt8?
        while at + 4 <= options.count, options.le16(at: at) != 0 {
            let len = Int(options.le16(at: at + 2))
            if options.le16(at: at) == 9 { tsresol = options[at + 4] }
            at += 4 + (len + 3) / 4 * 4
        }
        #expect(tsresol == 6)
    }

    @Test func recordsRoundTripWithTheirDirectionConnectionAndFDs() throws {
        let version = encodeMessage(MessageHeader(messageID: 1, command: .version, messageSize: 0),
                                    payload: VersionPayload(capabilities: VersionCapabilities(maxMsgFDs: 8)))
        let records = [
            CaptureRecord(timestampMicros: 1_700_000_000_123_456, connection: 1, direction: .clientToServer, message: version),
            CaptureRecord(timestampMicros: 1_700_000_000_123_999, connection: 1, direction: .serverToClient,
                          fds: [CapturedFD(kind: .memfd, size: 1 << 20)], message: MessageHeader(messageID: 1, command: .version, messageSize: 16, flags: 1).bytes),
            CaptureRecord(timestampMicros: 1_700_000_001_000_000, connection: 7, direction: .clientToServer, flags: .truncated,
                          fds: [CapturedFD(kind: .eventfd), CapturedFD(kind: .socket)], message: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
                          originalLength: 4096),
        ]
        var file = Pcapng.fileHeader()
        for r in records { file += Pcapng.packetBlock(r) }
        let back = try Pcapng.records(in: file)
        #expect(back == records)
        let packets = try Pcapng.packets(in: file)
        #expect(packets.map(\.linkType) == [147, 147, 147])
        #expect(packets[2].originalLength == 12 + 2 * 16 + 4096, "the original length counts the whole message")
    }

    @Test func thePseudoHeaderHasTheDocumentedLayout() {
        let r = CaptureRecord(timestampMicros: 0, connection: 0x0102_0304, direction: .serverToClient, flags: [.truncated],
                              fds: [CapturedFD(kind: .memfd, size: 0x1000)], message: [0xAA])
        let p = r.packet
        #expect(p[0] == 1, "version")
        #expect(p[1] == 1, "server to client")
        #expect(p.le16(at: 2) == 28, "header length 12 + 16")
        #expect(p.le32(at: 4) == 0x0102_0304)
        #expect(p.le16(at: 8) == 1, "fd count")
        #expect(p.le16(at: 10) == 0x2, "truncated")
        #expect(p.le32(at: 12) == 1, "memfd")
        #expect(p.le64(at: 20) == 0x1000, "size")
        #expect(p[28] == 0xAA, "the message follows")
    }

    @Test func damagedFilesAreRefusedNotTrusted() {
        var file = Pcapng.fileHeader() + Pcapng.packetBlock(CaptureRecord(timestampMicros: 1, connection: 1, direction: .clientToServer,
                                                                             message: MessageHeader(messageID: 1, command: .deviceReset, messageSize: 16).bytes))
        #expect(throws: ProtocolError.self) { _ = try Pcapng.packets(in: Array(file.dropLast(3))) }
        file[8] ^= 0xFF  // byte-order magic
        #expect(throws: ProtocolError.self) { _ = try Pcapng.packets(in: file) }
        var badLength = Pcapng.fileHeader()
        badLength += [6, 0, 0, 0, 0xFF, 0xFF, 0, 0]
        #expect(throws: ProtocolError.self) { _ = try Pcapng.packets(in: badLength) }
    }

    @Test func nanosecondInterfacesAreReadInMicroseconds() throws {
        // An interface written by another tool with if_tsresol 9 (nanoseconds).
        var idbBody = WireWriter()
        idbBody.u16(147); idbBody.u16(0); idbBody.u32(65535)
        idbBody.u16(9); idbBody.u16(1); idbBody.u8(9); idbBody.zeros(3)
        idbBody.u32(0)
        var w = WireWriter()
        let header = Pcapng.fileHeader()
        let shbLength = Int(header.le32(at: 4))
        w.append(header[0..<shbLength])
        w.u32(1); w.u32(UInt32(12 + idbBody.bytes.count)); w.append(idbBody.bytes); w.u32(UInt32(12 + idbBody.bytes.count))
        let record = CaptureRecord(timestampMicros: 0, connection: 1, direction: .clientToServer,
                                   message: MessageHeader(messageID: 2, command: .deviceReset, messageSize: 16).bytes)
        var epb = Pcapng.packetBlock(record)
        let ns: UInt64 = 1_700_000_000_123_456_789
        for i in 0..<4 { epb[12 + i] = UInt8(truncatingIfNeeded: (ns >> 32) >> (8 * UInt64(i))) }
        for i in 0..<4 { epb[16 + i] = UInt8(truncatingIfNeeded: ns >> (8 * UInt64(i))) }
        let back = try Pcapng.records(in: w.bytes + epb)
        #expect(back.first?.timestampMicros == 1_700_000_000_123_456)
    }
}
