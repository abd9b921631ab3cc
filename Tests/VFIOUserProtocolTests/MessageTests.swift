import Testing
@testable import VFIOUserProtocol

@Suite("Message helpers and per-command rules")
struct MessageTests {
    @Test func encodeMessageFixesSize() throws {
        let m = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 999),
                              payload: RegionAccess(offset: 4, region: 7, count: 2))
        #expect(m.count == 32 && m.le32(at: 4) == 32)
        let raw = encodeMessage(MessageHeader(messageID: 1, command: .deviceReset, messageSize: 5), payload: [UInt8]())
        #expect(raw == [1, 0, 13, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test func decodeFromMessageChecksSize() throws {
        var m = encodeMessage(MessageHeader(messageID: 1, command: .deviceGetIRQInfo, messageSize: 0), payload: IRQInfo(index: 2))
        #expect(throws: ProtocolError.self) { try IRQInfo(message: Array(m.dropLast())) }
        m.setLE32(8, at: 4)  // msg_size < 16
        #expect(throws: ProtocolError.self) { try IRQInfo(message: m) }
        // msg_size bounds the payload even if more bytes follow (the next message).
        var two = encodeMessage(MessageHeader(messageID: 1, command: .regionRead, messageSize: 0), payload: RegionAccess(offset: 0, region: 7, count: 4))
        two += [0xde, 0xad]
        #expect(try RegionAccess(message: two).data.isEmpty)
    }

    @Test func regionAccessFastHeader() throws {
        let msg = encodeMessage(MessageHeader(messageID: 3, command: .regionWrite, messageSize: 0),
                                payload: RegionAccess(offset: 0x1122_3344_5566_7788, region: 5, data: [1, 2]))
        let h = try RegionAccess.decodeHeader(msg, payloadOffset: 16)
        #expect(h.offset == 0x1122_3344_5566_7788 && h.region == 5 && h.count == 2)
        #expect(throws: ProtocolError.self) { try RegionAccess.decodeHeader(Array(msg.prefix(31)), payloadOffset: 16) }
        #expect(throws: ProtocolError.self) { try RegionAccess.decodeHeader(msg, payloadOffset: -1) }
        #expect(throws: ProtocolError.self) { try RegionAccess.decodeHeader(msg, payloadOffset: 1000) }
        #expect(throws: ProtocolError.self) { try RegionAccess(offset: 0, region: 0, count: 4, data: [1]).validateDataLength() }
    }

    @Test func setIRQsValidation() throws {
        let ok = SetIRQs(flags: [.dataBool, .actionUnmask], index: 0, start: 0, count: 2, data: [1, 0])
        #expect(ok.argsz == 22 && ok.dataType == .bool && ok.action == .unmask)
        try ok.validate()
        try SetIRQs(flags: [.dataNone, .actionTrigger], index: 1, start: 0, count: 0).validate()
        #expect(SetIRQs(flags: [.dataNone, .actionMask], index: 0, start: 0, count: 1).dataType == SetIRQs.DataType.none)

        let bad: [SetIRQs] = [
            SetIRQs(flags: [.dataBool, .actionTrigger], index: 0, start: 0, count: 3, data: [1]),  // BOOL size
            SetIRQs(flags: [.dataNone, .dataEventFD, .actionTrigger], index: 0, start: 0, count: 1),  // two data bits
            SetIRQs(flags: [.dataNone], index: 0, start: 0, count: 1),  // no action
            SetIRQs(flags: [.dataNone, .actionMask, .actionUnmask], index: 0, start: 0, count: 1),  // two actions
            SetIRQs(flags: SetIRQFlags(rawValue: 0x61), index: 0, start: 0, count: 1),  // unknown bit 0x40
            SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 0),  // count 0 not NONE
            SetIRQs(flags: [.dataNone, .actionTrigger], index: 2, start: 1, count: 0),  // count 0 start 1
            SetIRQs(argsz: 19, flags: [.dataNone, .actionTrigger], index: 0, start: 0, count: 1),  // argsz < 20
        ]
        for s in bad { #expect(throws: ProtocolError.self, "\(s)") { try s.validate() } }
        #expect(bad[1].dataType == nil && bad[2].action == nil && bad[3].action == nil)
        #expect(decodeThrows(SetIRQs.self, [UInt8](repeating: 0, count: 19)))
        #expect(!decodeThrows(SetIRQs.self, [UInt8](repeating: 0, count: 20)))
    }

    @Test func writeMultiValidation() throws {
        let e = WriteMultiEntry(offset: 0x10, region: 0, count: 2, data: 0xdead_beef)
        #expect(e.bytes == [0xef, 0xbe])
        try WriteMulti(entries: [e, WriteMultiEntry(offset: 0, region: 1, count: 8, data: 1)]).validate()
        #expect(throws: ProtocolError.self) { try WriteMulti(entries: []).validate() }
        #expect(throws: ProtocolError.self) { try WriteMulti(entries: [e, WriteMultiEntry(offset: 0, region: 0, count: 0, data: 0)]).validate() }
        #expect(throws: ProtocolError.self) { try WriteMulti(entries: [WriteMultiEntry(offset: 0, region: 0, count: 9, data: 0)]).validate() }
        let bytes = WriteMulti(entries: [e]).encoded
        #expect(bytes.count == 8 + 24 && bytes.le64(at: 0) == 1 && bytes.le64(at: 24) == 0xdead_beef)
        // A wr_cnt larger than the payload is rejected without allocating for it.
        var huge = bytes
        huge.setLE64(.max, at: 0)
        #expect(decodeThrows(WriteMulti.self, huge))
    }

    @Test func dmaUnmapLayouts() throws {
        let all = DMAUnmapRequest(flags: .all, address: 0, size: 0)
        #expect(all.encoded.count == 24 && all.encoded.le32(at: 4) == 2)
        let legacy = DMAUnmapRequest(argsz: 48, flags: .getDirtyBitmap, address: 0x1000, size: 0x2000,
                                     bitmap: DirtyBitmapHeader(pgsize: 4096, size: 8))
        #expect(legacy.encoded.count == 40)
        #expect(legacy.echo.encoded.count == 24)
        #expect(decodeThrows(DMAUnmapRequest.self, Array(legacy.encoded.prefix(24))))
    }

    // MARK: DMA_READ reply layouts (reference §3.9)

    func specReply(address: UInt64, data: [UInt8]) -> [UInt8] {
        DMAAccess(address: address, count: UInt64(data.count), data: data).encoded
    }

    /// QEMU 10.1: u32 count at P+8, data at P+12, then 4 zero bytes.
    func qemuReply(address: UInt64, data: [UInt8]) -> [UInt8] {
        var w = WireWriter()
        w.u64(address); w.u32(UInt32(data.count)); w.append(data); w.zeros(4)
        return w.bytes
    }

    @Test func dmaReadReplySpecLayout() throws {
        let data: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        let p = specReply(address: 0x5000, data: data)
        let (a, layout) = try DMAAccess.decodeDMAReadReplyDetectingLayout(p, expectedCount: 8)
        #expect(layout == .spec && a.data == data && a.address == 0x5000 && a.count == 8)
    }

    @Test func dmaReadReplyQEMULayout() throws {
        let data: [UInt8] = [0xaa, 0xbb, 0xcc, 0xdd, 5, 6, 7, 8, 9, 10]
        let p = qemuReply(address: 0x5000, data: data)
        #expect(p.count == 16 + data.count)  // same msg_size as the SPEC layout
        let (a, layout) = try DMAAccess.decodeDMAReadReplyDetectingLayout(p, expectedCount: 10)
        #expect(layout == .qemu && a.data == data && a.count == 10)
        // Reading it the SPEC way would have been wrong:
        #expect(try DMAAccess(payload: p).data != data)
    }

    @Test func dmaReadReplyAmbiguousCase() throws {
        // QEMU data starting with 4 zero bytes looks like a SPEC reply ending in 4 zeros.
        let data: [UInt8] = [0, 0, 0, 0, 1, 2, 3, 4]
        let p = qemuReply(address: 0, data: data)
        #expect(try DMAAccess.decodeDMAReadReply(p, expectedCount: 8, ambiguousAs: .qemu).data == data)
        #expect(try DMAAccess.decodeDMAReadReply(p, expectedCount: 8).data == [1, 2, 3, 4, 0, 0, 0, 0])
        // A SPEC reply whose data ends in non-zero bytes is never taken for QEMU's.
        let s = specReply(address: 0, data: [0, 0, 0, 0, 1, 2, 3, 4])
        #expect(try DMAAccess.decodeDMAReadReplyDetectingLayout(s, expectedCount: 8, ambiguousAs: .qemu).1 == .spec)
    }

    @Test func dmaReadReplyRejectsMismatch() {
        let p = specReply(address: 0, data: [1, 2, 3, 4])
        #expect(throws: ProtocolError.self) { try DMAAccess.decodeDMAReadReply(p, expectedCount: 5) }
        #expect(throws: ProtocolError.self) { try DMAAccess.decodeDMAReadReply(Array(p.prefix(15)), expectedCount: 0) }
        #expect(throws: ProtocolError.self) { try DMAAccess.decodeDMAReadReply(Array(p.prefix(17)), expectedCount: 4) }
        #expect(throws: ProtocolError.self) { try DMAAccess.decodeDMAReadReply(p, expectedCount: .max) }
    }

    // MARK: DEVICE_FEATURE and migration

    @Test func deviceFeatureValidation() throws {
        try DeviceFeature(feature: DeviceFeature.migDeviceState, set: true, payload: MigDeviceState(state: .stop)).validate()
        try DeviceFeature(feature: DeviceFeature.migration, get: true, set: true, probe: true).validate()
        #expect(throws: ProtocolError.self) { try DeviceFeature(feature: 2, get: true, set: true).validate() }
        #expect(throws: ProtocolError.self) { try DeviceFeature(feature: 2).validate() }
        #expect(throws: ProtocolError.self) { try DeviceFeature(argsz: 8, flags: 0x80002).validate() }
        let f = DeviceFeature(feature: DeviceFeature.dmaLoggingReport, get: true, argsz: 8 + 24 + 8,
                              payload: DMALoggingReport(iova: 0, length: 64 * 4096, pageSize: 4096))
        #expect(f.flags == 0x10008 && f.data.count == 24 && f.feature == 8)
        #expect(try f.decodeData(as: DMALoggingReport.self).length == 64 * 4096)
    }

    @Test func migrationPayloads() throws {
        let s = MigDeviceState(state: .stopCopy)
        #expect(s.encoded == [3, 0, 0, 0, 0, 0, 0, 0] && s.state == .stopCopy)
        #expect(MigDeviceState(deviceState: 42).state == nil)
        #expect(MigrationState.allCases.map(\.rawValue) == Array(0 ... 7))

        let start = DMALoggingStart(pageSize: 4096, ranges: [DMALoggingRange(iova: 0x1000, length: 0x2000)])
        let b = start.encoded
        #expect(b.count == 32 && b.le64(at: 0) == 4096 && b.le32(at: 8) == 1 && b.le64(at: 16) == 0x1000 && b.le64(at: 24) == 0x2000)

        #expect(DMALoggingReport.bitmapWords(length: 64 * 4096, pageSize: 4096) == 1)
        #expect(DMALoggingReport.bitmapWords(length: 65 * 4096, pageSize: 4096) == 2)
        #expect(DMALoggingReport.bitmapWords(length: 1, pageSize: 4096) == 1)
        #expect(DMALoggingReport.bitmapWords(length: 0, pageSize: 4096) == 0)
        #expect(DMALoggingReport.bitmapWords(length: 10, pageSize: 0) == 0)

        // libvfio-user pads the MIG_DATA_READ reply to the requested size: use `size`.
        let padded: [UInt8] = [11, 0, 0, 0, 3, 0, 0, 0, 7, 8, 9, 0, 0, 0, 0, 0]
        let reply = try MigDataReadReply(payload: padded)
        #expect(reply.size == 3 && reply.data == [7, 8, 9])
        #expect(decodeThrows(MigDataWrite.self, [12, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3]))
        #expect(MigrationFeatureFlags([.stopCopy, .preCopy]).encoded == [5, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test func regionIOFDsReplyLayout() throws {
        let e = IOFDEntry(offset: 0x100, size: 4, fdIndex: 1, flags: IOFDEntry.flagDatamatch, datamatch: 0x55)
        let reply = RegionIOFDsReply(index: 0, entries: [e, e])
        #expect(reply.argsz == 96 && reply.count == 2)
        let bytes = reply.encoded
        #expect(bytes.count == 96 && bytes.le64(at: 16) == 0x100 && bytes.le32(at: 32) == 1 && bytes.le64(at: 48) == 0x55)
        // Header-only reply (client argsz too small) decodes with no entries.
        let headerOnly = try RegionIOFDsReply(payload: Array(bytes.prefix(16)))
        #expect(headerOnly.count == 2 && headerOnly.entries.isEmpty)
        #expect(decodeThrows(RegionIOFDsReply.self, Array(bytes.prefix(60))))
    }

    @Test func constants() {
        #expect(RegionType.pciVendor(0x8086) == 0x8000_8086)
        #expect(RegionIndex.bar(3) == .bar3 && RegionIndex.config.rawValue == 7 && RegionIndex.firstDeviceSpecific.rawValue == 9)
        #expect(RegionIndex.bar5.isBAR && !RegionIndex.rom.isBAR && RegionIndex(12).isDeviceSpecific)
        #expect(IRQIndex.count == 5 && IRQIndex.req.rawValue == 4 && IRQIndex.msix.description == "MSIX")
        #expect(DeviceInfoCapabilityID.pciAtomicComp == 5 && RegionCapabilityID.msixMappable == 3)
    }

    // MARK: trace lines

    @Test func traceLines() {
        func line(_ cmd: Command, reply: Bool = false, _ payload: some WirePayload) -> String {
            traceDescription(header: MessageHeader(messageID: 12, command: cmd, messageSize: 0, flags: reply ? 1 : 0),
                             payload: payload.encoded)
        }
        #expect(line(.regionRead, RegionAccess(offset: 0, region: 7, count: 4)) == "#12 REGION_READ req region=7 offset=0x0 count=4")
        #expect(line(.regionRead, reply: true, RegionAccess(offset: 0, region: 7, data: [0x34, 0x12, 0xe8, 0x11]))
            == "#12 REGION_READ reply region=7 offset=0x0 count=4 data=3412e811")
        #expect(line(.version, VersionPayload(capabilities: VersionCapabilities(maxMsgFDs: 8)))
            == #"#12 VERSION req v0.0 json={"capabilities":{"max_msg_fds":8}}"#)
        #expect(line(.deviceGetRegionInfo, reply: true, RegionInfo(index: 1, flags: [.read], size: 0x100, capabilities: [.msixMappable]))
            == "#12 DEVICE_GET_REGION_INFO reply index=1 argsz=40 flags=0x9 size=0x100 offset=0x0 caps=msix-mappable")
        #expect(line(.deviceSetIRQs, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 1))
            == "#12 DEVICE_SET_IRQS req index=2 start=0 count=1 eventfd|trigger flags=0x24")
        #expect(line(.deviceReset, EmptyPayload()) == "#12 DEVICE_RESET req")
        let bad = traceDescription(header: MessageHeader(messageID: 1, command: .regionRead, messageSize: 20), payload: [1, 2, 3, 4])
        #expect(bad.hasPrefix("#1 REGION_READ req undecodable"))
        #expect(traceDescription(message: [1, 2, 3]).contains("undecodable"))
        let long = line(.dmaWrite, DMAAccess(address: 0x10, count: 64, data: [UInt8](repeating: 0xab, count: 64)))
        #expect(long.hasSuffix("...(64 bytes)"))
    }
}
