import Testing
import VFIOUserCapture
import VFIOUserProtocol

/// The validator's rules, one crafted message each, after a clean start.
@Suite struct ValidatorTests {
    static func message(_ id: UInt16, _ command: Command, flags: UInt32 = 0, errno: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        MessageHeader(messageID: id, command: command, messageSize: UInt32(16 + payload.count), flags: flags, errorNumber: errno).bytes + payload
    }
    static func payload(_ p: some WirePayload) -> [UInt8] { p.encoded }

    /// VERSION both ways (QEMU's capabilities; the server agrees to write_multiple).
    static func negotiated() -> ProtocolValidator {
        var v = ProtocolValidator()
        let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 1 << 20, writeMultiple: true)
        #expect(v.check(message: message(1, .version, payload(VersionPayload(capabilities: caps))), originalLength: 0, fdCount: 0,
                        direction: .clientToServer, flags: []).isEmpty)
        #expect(v.check(message: message(1, .version, flags: 1, payload(VersionPayload(capabilities: caps))), originalLength: 0, fdCount: 0,
                        direction: .serverToClient, flags: []).isEmpty)
        return v
    }

    @Test func aCleanSessionHasNoDeviations() {
        var v = Self.negotiated()
        let steps: [([UInt8], Int, CaptureDirection)] = [
            (Self.message(2, .dmaMap, Self.payload(DMAMapRequest(flags: [.read, .write], offset: 0, address: 0, size: 0xa0000))), 1, .clientToServer),
            (Self.message(2, .dmaMap, flags: 1), 0, .serverToClient),
            (Self.message(3, .deviceGetInfo, Self.payload(DeviceInfo(argsz: 16, flags: [], numRegions: 0, numIRQs: 0))), 0, .clientToServer),
            (Self.message(3, .deviceGetInfo, flags: 1, Self.payload(DeviceInfo(argsz: 16, flags: [.pci, .reset], numRegions: 9, numIRQs: 5))), 0, .serverToClient),
            (Self.message(4, .regionRead, Self.payload(RegionAccess(offset: 0, region: 7, count: 4))), 0, .clientToServer),
            (Self.message(4, .regionRead, flags: 1, Self.payload(RegionAccess(offset: 0, region: 7, count: 4, data: [0x34, 0x12, 0xe8, 0x11]))), 0, .serverToClient),
            (Self.message(5, .regionWrite, flags: 0x10, Self.payload(RegionAccess(offset: 0x10, region: 0, count: 4, data: [1, 2, 3, 4]))), 0, .clientToServer),
            (Self.message(6, .deviceSetIRQs, Self.payload(SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 2))), 2, .clientToServer),
            (Self.message(6, .deviceSetIRQs, flags: 1), 0, .serverToClient),
            (Self.message(7, .deviceReset), 0, .clientToServer),
            (Self.message(7, .deviceReset, flags: 0x21, errno: 22), 0, .serverToClient),
        ]
        for (i, (m, fds, dir)) in steps.enumerated() {
            let d = v.check(message: m, originalLength: m.count, fdCount: fds, direction: dir, flags: [])
            #expect(d.isEmpty, "step \(i): \(d)")
        }
    }

    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var message: [UInt8]
        var fds = 0
        var direction = CaptureDirection.clientToServer
        var rule: ValidationRule
        var description: String { name }
    }

    static let cases: [Case] = [
        Case(name: "short DMA_MAP", message: message(9, .dmaMap, Array(payload(DMAMapRequest(flags: .read, offset: 0, address: 0, size: 4096)).prefix(28))), rule: .payloadSize),
        Case(name: "DMA_MAP with an unknown flag", message: message(9, .dmaMap, payload(DMAMapRequest(flags: DMAMapFlags(rawValue: 0x5), offset: 0, address: 0, size: 4096))), rule: .dmaMapFlags),
        Case(name: "DMA_MAP with two fds", message: message(9, .dmaMap, payload(DMAMapRequest(flags: .read, offset: 0, address: 0, size: 4096))), fds: 2, rule: .fdCount),
        Case(name: "an fd on GET_INFO", message: message(9, .deviceGetInfo, payload(DeviceInfo(argsz: 16, flags: [], numRegions: 0, numIRQs: 0))), fds: 1, rule: .fdUnexpected),
        Case(name: "GET_INFO argsz 8", message: message(9, .deviceGetInfo, payload(DeviceInfo(argsz: 8, flags: [], numRegions: 0, numIRQs: 0))), rule: .argsz),
        Case(name: "SET_IRQS with two ACTION bits", message: message(9, .deviceSetIRQs, payload(SetIRQs(flags: SetIRQFlags(rawValue: 0x29), index: 0, start: 0, count: 1))), rule: .setIRQsFlags),
        Case(name: "SET_IRQS eventfd count 2 with 1 fd", message: message(9, .deviceSetIRQs, payload(SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 1, start: 0, count: 2))), fds: 1, rule: .fdCount),
        Case(name: "REGION_READ beyond max_data_xfer_size", message: message(9, .regionRead, payload(RegionAccess(offset: 0, region: 2, count: 2 << 20))), rule: .maxTransfer),
        Case(name: "REGION_WRITE whose data is not count bytes", message: message(9, .regionWrite, payload(RegionAccess(offset: 0x3c, region: 7, count: 4, data: [1]))), rule: .payloadSize),
        Case(name: "17 fds", message: message(9, .deviceSetIRQs, payload(SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 17))), fds: 17, rule: .fdLimit),
        Case(name: "command 99", message: message(9, Command(99)), rule: .unknownCommand),
        Case(name: "DIRTY_PAGES (removed)", message: message(9, .dirtyPages, [8, 0, 0, 0, 1, 0, 0, 0]), rule: .unknownCommand),
        Case(name: "DMA_READ from the client", message: message(9, .dmaRead, payload(DMAAccess(address: 0, count: 4))), rule: .direction),
        Case(name: "a second VERSION", message: message(9, .version, payload(VersionPayload(capabilities: nil))), rule: .versionFirst),
        Case(name: "type bits 2", message: message(9, .deviceReset, flags: 2), rule: .type),
        Case(name: "undefined flag bits", message: message(9, .deviceReset, flags: 0x100), rule: .reservedFlags),
        Case(name: "a command with an errno", message: message(9, .deviceReset, errno: 5), rule: .commandErrno),
        Case(name: "a reply nobody asked for", message: message(77, .deviceGetInfo, flags: 1), direction: .serverToClient, rule: .replyUnmatched),
        Case(name: "UNMAP ALL with an address", message: message(9, .dmaUnmap, payload(DMAUnmapRequest(flags: .all, address: 0x1000, size: 0))), rule: .dmaUnmapFlags),
        Case(name: "GET_REGION_IO_FDS with count", message: message(9, .deviceGetRegionIOFDs, payload(RegionIOFDsRequest(argsz: 16, index: 0, count: 1))), rule: .ioFDsRequest),
        Case(name: "DEVICE_FEATURE with GET and SET", message: message(9, .deviceFeature, [16, 0, 0, 0, 0x01, 0x00, 0x03, 0x00]), rule: .featureFlags),
        Case(name: "DEVICE_RESET with a payload", message: message(9, .deviceReset, [0, 0, 0, 0]), rule: .payloadSize),
    ]

    @Test(arguments: cases)
    func eachRuleIsReportedForTheMessageThatBreaksIt(_ c: Case) {
        var v = Self.negotiated()
        let d = v.check(message: c.message, originalLength: c.message.count, fdCount: c.fds, direction: c.direction, flags: [])
        #expect(d.map(\.rule.id).contains(c.rule.id), "\(c.name): \(d)")
        #expect(d.allSatisfy { !$0.description.isEmpty && $0.knownFrom == nil })
        if let first = d.first { #expect(first.description.contains(first.rule.section), "the report names the rule's source") }
    }

    @Test func repliesAreMatchedToTheirCommands() {
        var v = Self.negotiated()
        // A posted write, then a reply to it: the reply breaks the NO_REPLY rule.
        _ = v.check(message: Self.message(20, .regionWrite, flags: 0x10, Self.payload(RegionAccess(offset: 0, region: 0, count: 1, data: [9]))),
                    originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        let d = v.check(message: Self.message(20, .regionWrite, flags: 1, Self.payload(RegionAccess(offset: 0, region: 0, count: 1))),
                        originalLength: 0, fdCount: 0, direction: .serverToClient, flags: [])
        #expect(d.map(\.rule) == [.replyToNoReply])
        // A reply with another command's number; a read reply longer than asked.
        _ = v.check(message: Self.message(21, .regionRead, Self.payload(RegionAccess(offset: 0, region: 7, count: 2))),
                    originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        let long = v.check(message: Self.message(21, .regionRead, flags: 1, Self.payload(RegionAccess(offset: 0, region: 7, count: 4, data: [1, 2, 3, 4]))),
                           originalLength: 0, fdCount: 0, direction: .serverToClient, flags: [])
        #expect(long.map(\.rule) == [.replyCount])
        _ = v.check(message: Self.message(22, .deviceGetIRQInfo, Self.payload(IRQInfo(argsz: 16, flags: [], index: 0, count: 0))),
                    originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        let wrong = v.check(message: Self.message(22, .deviceGetInfo, flags: 0x21, errno: 22), originalLength: 0, fdCount: 0,
                            direction: .serverToClient, flags: [])
        #expect(wrong.map(\.rule) == [.replyCommand])
        // A command that waits blocks its id.
        _ = v.check(message: Self.message(23, .deviceReset), originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        let again = v.check(message: Self.message(23, .deviceReset), originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        #expect(again.map(\.rule) == [.idInUse])
    }

    @Test func qemu10sDMALayoutIsReportedAsItsKnownDeviation() {
        var v = Self.negotiated()
        // The server asks for 8 bytes; QEMU answers {address u64, count u32, data at 28, 4 zero bytes}.
        _ = v.check(message: Self.message(1, .dmaRead, Self.payload(DMAAccess(address: 0x1000, count: 8))), originalLength: 0, fdCount: 0,
                    direction: .serverToClient, flags: [])
        var p = WireWriter()
        p.u64(0x1000); p.u32(8); p.append([1, 2, 3, 4, 5, 6, 7, 8]); p.zeros(4)
        let d = v.check(message: Self.message(1, .dmaRead, flags: 1, p.bytes), originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        #expect(d.map(\.rule) == [.dmaLayout])
        #expect(d.first?.knownFrom == "QEMU 10.1")
        // And the header-only DMA_WRITE reply.
        _ = v.check(message: Self.message(2, .dmaWrite, Self.payload(DMAAccess(address: 0x1000, count: 2, data: [1, 2]))), originalLength: 0,
                    fdCount: 0, direction: .serverToClient, flags: [])
        let w = v.check(message: Self.message(2, .dmaWrite, flags: 1), originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        #expect(w.map(\.rule) == [.dmaLayout] && w.first?.knownFrom == "QEMU 10.1")
        #expect(w.first?.description.contains("known QEMU 10.1 deviation") == true)
    }

    @Test func truncatedCapturesAreNotBlamedOnThePeer() {
        var v = Self.negotiated()
        let full = Self.message(30, .regionWrite, Self.payload(RegionAccess(offset: 0, region: 2, count: 4096, data: [UInt8](repeating: 7, count: 4096))))
        let d = v.check(message: Array(full.prefix(100)), originalLength: full.count, fdCount: 0, direction: .clientToServer, flags: .truncated)
        #expect(d.isEmpty, "\(d)")
    }

    @Test func commandsBeforeVersionAreReported() {
        var v = ProtocolValidator()
        let d = v.check(message: Self.message(1, .deviceGetInfo, Self.payload(DeviceInfo(argsz: 16, flags: [], numRegions: 0, numIRQs: 0))),
                        originalLength: 0, fdCount: 0, direction: .clientToServer, flags: [])
        #expect(d.map(\.rule) == [.versionFirst])
    }

    @Test func ruleIDsAreUnique() {
        #expect(Set(ValidationRule.all.map(\.id)).count == ValidationRule.all.count)
    }
}
