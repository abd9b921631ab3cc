import Testing
@testable import VFIOUserProtocol

/// Test vectors TV1-TV12 of reference §8, checked in both directions: our
/// encoder produces exactly these bytes, and decoding them gives the fields.
@Suite("Reference test vectors (§8)")
struct TestVectorTests {
    /// Splits a message into its decoded header and payload, checking msg_size.
    func split(_ bytes: [UInt8]) throws -> (MessageHeader, [UInt8]) {
        let h = try MessageHeader.decode(bytes)
        #expect(Int(h.messageSize) == bytes.count)
        return (h, Array(bytes[MessageHeader.size...]))
    }

    @Test func tv1VersionRequest() throws {
        let bytes = hexDump("""
            0000: 01 00 01 00 37 00 00 00 00 00 00 00 00 00 00 00
            0010: 00 00 00 00 7b 22 63 61 70 61 62 69 6c 69 74 69
            0020: 65 73 22 3a 7b 22 6d 61 78 5f 6d 73 67 5f 66 64
            0030: 73 22 3a 38 7d 7d 00
            """)
        #expect(bytes.count == 55)
        let payload = VersionPayload(major: 0, minor: 0, capabilities: VersionCapabilities(maxMsgFDs: 8))
        let header = MessageHeader(messageID: 1, command: .version, messageSize: 0)
        #expect(encodeMessage(header, payload: payload) == bytes)

        let (h, p) = try split(bytes)
        #expect(h.messageID == 1 && h.command == .version && h.kind == .command && h.errorNumber == 0)
        let v = try VersionPayload(payload: p)
        #expect(v.major == 0 && v.minor == 0)
        #expect(v.capabilities == VersionCapabilities(maxMsgFDs: 8))
        #expect(String(decoding: v.rawJSON, as: UTF8.self) == #"{"capabilities":{"max_msg_fds":8}}"#)
        #expect(v == payload)
    }

    @Test func tv2VersionReply() throws {
        let bytes = hexDump("""
            0000: 01 00 01 00 54 00 00 00 01 00 00 00 00 00 00 00
            0010: 00 00 00 00 7b 22 63 61 70 61 62 69 6c 69 74 69
            0020: 65 73 22 3a 7b 22 6d 61 78 5f 6d 73 67 5f 66 64
            0030: 73 22 3a 38 2c 22 6d 61 78 5f 64 61 74 61 5f 78
            0040: 66 65 72 5f 73 69 7a 65 22 3a 31 30 34 38 35 37
            0050: 36 7d 7d 00
            """)
        let caps = VersionCapabilities(maxMsgFDs: 8, maxDataXferSize: 1_048_576)
        let request = MessageHeader(messageID: 1, command: .version, messageSize: 55)
        let header = MessageHeader.reply(to: request, payloadSize: 0)
        #expect(encodeMessage(header, payload: VersionPayload(capabilities: caps)) == bytes)

        let (h, p) = try split(bytes)
        #expect(h.isReply && !h.isError && h.messageID == 1 && h.command == .version)
        let v = try VersionPayload(payload: p)
        #expect(v.capabilities == caps)
        #expect(v.capabilities?.effectivePgsizes == 4096)
        #expect(v.capabilities?.effectiveMaxDMAMaps == 65535)
    }

    @Test func tv3DeviceGetInfoRequest() throws {
        let bytes = hexDump("""
            0000: 02 00 04 00 20 00 00 00 00 00 00 00 00 00 00 00
            0010: 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            """)
        let header = MessageHeader(messageID: 2, command: .deviceGetInfo, messageSize: 0)
        #expect(encodeMessage(header, payload: DeviceInfo(argsz: 16)) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.command == .deviceGetInfo && h.kind == .command && h.messageID == 2)
        #expect(try DeviceInfo(payload: p) == DeviceInfo(argsz: 16, flags: [], numRegions: 0, numIRQs: 0))
    }

    @Test func tv4DeviceGetInfoReply() throws {
        let bytes = hexDump("""
            0000: 02 00 04 00 20 00 00 00 01 00 00 00 00 00 00 00
            0010: 10 00 00 00 03 00 00 00 09 00 00 00 05 00 00 00
            """)
        let info = DeviceInfo(argsz: 16, flags: [.reset, .pci], numRegions: 9, numIRQs: 5)
        let header = MessageHeader(messageID: 2, command: .deviceGetInfo, messageSize: 0, flags: 1)
        #expect(encodeMessage(header, payload: info) == bytes)
        // A non-extended device info answers a 16-byte argsz request with exactly this.
        #expect(info.reply(forArgsz: 16) == info)
        let (h, p) = try split(bytes)
        #expect(h.isReply)
        let d = try DeviceInfo(payload: p)
        #expect(d == info)
        #expect(d.capOffset == nil)
    }

    @Test func tv5RegionReadRequest() throws {
        let bytes = hexDump("""
            0000: 03 00 09 00 20 00 00 00 00 00 00 00 00 00 00 00
            0010: 00 00 00 00 00 00 00 00 07 00 00 00 04 00 00 00
            """)
        let access = RegionAccess(offset: 0, region: RegionIndex.config.rawValue, count: 4)
        #expect(encodeMessage(MessageHeader(messageID: 3, command: .regionRead, messageSize: 0), payload: access) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.command == .regionRead && h.messageID == 3 && h.kind == .command)
        #expect(try RegionAccess(payload: p) == access)
        let fast = try RegionAccess.decodeHeader(bytes, payloadOffset: 16)
        #expect(fast.offset == 0 && fast.region == 7 && fast.count == 4)
    }

    @Test func tv6RegionReadReply() throws {
        let bytes = hexDump("""
            0000: 03 00 09 00 24 00 00 00 01 00 00 00 00 00 00 00
            0010: 00 00 00 00 00 00 00 00 07 00 00 00 04 00 00 00
            0020: 34 12 e8 11
            """)
        let access = RegionAccess(offset: 0, region: 7, data: [0x34, 0x12, 0xe8, 0x11])
        let request = MessageHeader(messageID: 3, command: .regionRead, messageSize: 32)
        #expect(encodeMessage(.reply(to: request, payloadSize: 0), payload: access) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.isReply && h.messageSize == 36)
        let a = try RegionAccess(payload: p)
        #expect(a == access)
        try a.validateDataLength()
        #expect(a.data.le16(at: 0) == 0x1234 && a.data.le16(at: 2) == 0x11e8)
    }

    @Test func tv7ErrorReply() throws {
        let bytes = hexDump("""
            0000: 04 00 63 00 10 00 00 00 21 00 00 00 16 00 00 00
            """)
        let request = MessageHeader(messageID: 4, command: Command(99), messageSize: 16)
        let header = MessageHeader.errorReply(to: request, errno: .EINVAL)
        #expect(header.bytes == bytes)
        #expect(encodeMessage(header, payload: EmptyPayload()) == bytes)
        let h = try MessageHeader.decode(bytes)
        #expect(h.command.rawValue == 99 && h.isReply && h.isError && h.errorNumber == 22 && h.messageSize == 16)
        #expect(traceDescription(message: bytes) == "#4 command 99 reply error=EINVAL(22)")
    }

    @Test func tv8RegionInfoRequestAndReply() throws {
        let request = hexDump("""
            0000: 05 00 05 00 30 00 00 00 00 00 00 00 00 00 00 00
            0010: 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            0020: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            """)
        let reply = hexDump("""
            0000: 05 00 05 00 30 00 00 00 01 00 00 00 00 00 00 00
            0010: 20 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00
            0020: 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            """)
        let req = RegionInfoRequest(argsz: 32, index: RegionIndex.bar0.rawValue)
        let reqHeader = MessageHeader(messageID: 5, command: .deviceGetRegionInfo, messageSize: 0)
        #expect(encodeMessage(reqHeader, payload: req) == request)
        let (h1, p1) = try split(request)
        #expect(h1.command == .deviceGetRegionInfo && h1.kind == .command)
        #expect(try RegionInfoRequest(payload: p1) == req)

        let info = RegionInfo(index: 0, flags: [.read, .write], size: 0x1000)
        #expect(info.argsz == 32 && info.capOffset == 0)
        #expect(encodeMessage(.reply(to: h1, payloadSize: 0), payload: info.reply(forArgsz: req.argsz)) == reply)
        let (h2, p2) = try split(reply)
        #expect(h2.isReply && h2.messageID == 5)
        let decoded = try RegionInfo(payload: p2)
        #expect(decoded == info)
        #expect(decoded.size == 0x1000 && decoded.flags == [.read, .write] && decoded.capabilities.isEmpty)
    }

    @Test func tv9SetIRQsMSIX() throws {
        let bytes = hexDump("""
            0000: 06 00 08 00 24 00 00 00 00 00 00 00 00 00 00 00
            0010: 14 00 00 00 24 00 00 00 02 00 00 00 00 00 00 00
            0020: 01 00 00 00
            """)
        let set = SetIRQs(flags: [.dataEventFD, .actionTrigger], index: IRQIndex.msix.rawValue, start: 0, count: 1)
        #expect(set.argsz == 20)
        #expect(encodeMessage(MessageHeader(messageID: 6, command: .deviceSetIRQs, messageSize: 0), payload: set) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.command == .deviceSetIRQs && h.messageSize == 36)
        let s = try SetIRQs(payload: p)
        #expect(s == set)
        #expect(s.dataType == .eventfd && s.action == .trigger && s.data.isEmpty)
        try s.validate()
    }

    @Test func tv10DMAMap() throws {
        let bytes = hexDump("""
            0000: 07 00 02 00 30 00 00 00 00 00 00 00 00 00 00 00
            0010: 20 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00
            0020: 00 00 00 00 00 00 00 00 00 00 0a 00 00 00 00 00
            """)
        let expectedReply = hexDump("07 00 02 00 10 00 00 00 01 00 00 00 00 00 00 00")
        let map = DMAMapRequest(argsz: 32, flags: [.read, .write], offset: 0, address: 0, size: 0xa0000)
        let header = MessageHeader(messageID: 7, command: .dmaMap, messageSize: 0)
        #expect(encodeMessage(header, payload: map) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.command == .dmaMap && h.messageID == 7)
        #expect(try DMAMapRequest(payload: p) == map)
        #expect(encodeMessage(.reply(to: h, payloadSize: 0), payload: EmptyPayload()) == expectedReply)
    }

    @Test func tv11DeviceFeatureMigration() throws {
        let request = hexDump("""
            0000: 08 00 10 00 18 00 00 00 00 00 00 00 00 00 00 00
            0010: 10 00 00 00 01 00 01 00
            """)
        let reply = hexDump("""
            0000: 08 00 10 00 20 00 00 00 01 00 00 00 00 00 00 00
            0010: 10 00 00 00 01 00 01 00 05 00 00 00 00 00 00 00
            """)
        let req = DeviceFeature(feature: DeviceFeature.migration, get: true, argsz: 16)
        #expect(req.flags == 0x0001_0001)
        let reqHeader = MessageHeader(messageID: 8, command: .deviceFeature, messageSize: 0)
        #expect(encodeMessage(reqHeader, payload: req) == request)
        let (h1, p1) = try split(request)
        let f = try DeviceFeature(payload: p1)
        #expect(f == req && f.feature == DeviceFeature.migration && f.isGet && !f.isSet && !f.isProbe)
        try f.validate()

        let rep = DeviceFeature(argsz: 16, flags: f.flags, data: MigrationFeatureFlags([.stopCopy, .preCopy]).encoded)
        #expect(encodeMessage(.reply(to: h1, payloadSize: 0), payload: rep) == reply)
        let (_, p2) = try split(reply)
        let r = try DeviceFeature(payload: p2)
        #expect(r == rep)
        #expect(try r.decodeData(as: MigrationFeatureFlags.self) == [.stopCopy, .preCopy])
    }

    @Test func tv12PostedRegionWrite() throws {
        let bytes = hexDump("""
            0000: 09 00 0a 00 24 00 00 00 10 00 00 00 00 00 00 00
            0010: 10 00 00 00 00 00 00 00 00 00 00 00 04 00 00 00
            0020: ef be ad de
            """)
        let write = RegionAccess(offset: 0x10, region: RegionIndex.bar0.rawValue, data: [0xef, 0xbe, 0xad, 0xde])
        let header = MessageHeader(messageID: 9, command: .regionWrite, messageSize: 0, flags: MessageHeader.noReplyFlag)
        #expect(encodeMessage(header, payload: write) == bytes)
        let (h, p) = try split(bytes)
        #expect(h.noReply && h.kind == .command && h.command == .regionWrite)
        let w = try RegionAccess(payload: p)
        #expect(w == write)
        try w.validateDataLength()
        #expect(w.data.le32(at: 0) == 0xdead_beef)
        #expect(try RegionAccess(message: bytes) == write)
        #expect(traceDescription(message: bytes) == "#9 REGION_WRITE req(no-reply) region=0 offset=0x10 count=4 data=efbeadde")
    }
}
