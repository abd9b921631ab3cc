import TestSupport
import Testing
@testable import VFIOUserProtocol

/// Seeded random round-trip and truncation tests for every payload type.
@Suite("Property tests")
struct PropertyTests {
    static let iterations = 500

    /// Encodes `iterations` random values, checks decode(encode(x)) == x both
    /// as a bare payload and inside a whole message, and that random
    /// truncations never decode back to the original value. For `fixedLayout`
    /// types (no open-ended tail) every truncation must throw.
    func check<T: WirePayload & Equatable>(
        _ type: T.Type, seed: UInt64, fixedLayout: Bool, minSize: Int,
        command: Command = .version, _ generate: (inout SplitMix64) -> T
    ) {
        var rng = SplitMix64(seed: seed)
        var roundTrips = 0
        for i in 0 ..< Self.iterations {
            let value = generate(&rng)
            let bytes = value.encoded
            #expect(bytes.count >= minSize)
            do {
                let decoded = try T(payload: bytes)
                #expect(decoded == value, "iteration \(i): \(value) -> \(bytes) -> \(decoded)")
                let message = encodeMessage(MessageHeader(messageID: UInt16(i), command: command, messageSize: 0), payload: value)
                #expect(Int(try MessageHeader.decode(message).messageSize) == message.count)
                #expect(try T(message: message) == value)
                // Re-encoding is stable.
                #expect(decoded.encoded == bytes)
                roundTrips += 1
            } catch {
                Issue.record("iteration \(i): \(value) failed to decode: \(error)")
            }
            guard !bytes.isEmpty else { continue }
            for _ in 0 ..< 2 {
                let cut = rng.int(0 ... bytes.count - 1)
                let prefix = Array(bytes[..<cut])
                do {
                    let partial = try T(payload: prefix)
                    #expect(!fixedLayout && cut >= minSize, "iteration \(i): \(cut)/\(bytes.count) bytes decoded")
                    #expect(partial != value, "iteration \(i): truncated to \(cut) bytes gave the original back")
                } catch {
                    // Expected: a ProtocolError, not a trap.
                }
            }
        }
        #expect(roundTrips == Self.iterations)
    }

    // MARK: generators

    static func versionCaps(_ r: inout SplitMix64) -> VersionCapabilities {
        let keyPool = ["device-info-caps", "a", "quote\"", "back\\slash", "nl\n", "tab\t", "ctl\u{01}", "ünï", "🙂", ""]
        return VersionCapabilities(
            maxMsgFDs: r.optional { $0.int(0 ... 1024) },
            maxDataXferSize: r.optional { $0.int(0 ... Int(Int32.max)) },
            pgsizes: r.optional { $0.interesting64() },
            maxDMAMaps: r.optional { $0.int(0 ... 65535) },
            migration: r.optional { MigrationCapability(pgsize: $0.optional { $0.interesting64() },
                                                        maxBitmapSize: $0.optional { $0.interesting64() }) },
            twinSocket: r.optional { TwinSocket(supported: $0.bool(), fdIndex: $0.optional { $0.int(0 ... 64) }) },
            writeMultiple: r.optional { $0.bool() },
            extensions: r.optional { r in
                var d: [String: String] = [:]
                for _ in 0 ..< r.int(0 ... 3) { d[keyPool[r.int(0 ... keyPool.count - 1)]] = keyPool[r.int(0 ... keyPool.count - 1)] }
                return d
            })
    }

    static func regionCap(_ r: inout SplitMix64) -> RegionCapability {
        switch r.int(0 ... 5) {
        case 0: .sparseMmap((0 ..< r.int(0 ... 4)).map { _ in SparseMmapArea(offset: r.interesting64(), size: r.interesting64()) })
        case 1: .type(type: r.interesting32(), subtype: r.interesting32())
        case 2: .msixMappable
        case 3: .nvlink2SSATGT(tgt: r.u64())
        case 4: .nvlink2LinkSpeed(r.u32())
        default:
            // Unknown: an unassigned id, or a known id at another version. Bodies
            // are multiples of 8 so the padding added on encode is not new data.
            r.bool() ? .unknown(id: UInt16(r.int(6 ... 0xffff)), version: r.u16(), body: r.bytes(8 * r.int(0 ... 3)))
                : .unknown(id: UInt16(r.int(1 ... 5)), version: UInt16(r.int(2 ... 0xffff)), body: r.bytes(8 * r.int(0 ... 3)))
        }
    }

    static func deviceCap(_ r: inout SplitMix64) -> DeviceInfoCapability {
        r.bool() ? .pciAtomicComp(flags: r.u32())
            : .unknown(id: UInt16(r.int(1 ... 4)), version: r.u16(), body: r.bytes(8 * r.int(0 ... 4)))
    }

    // MARK: tests

    @Test func version() {
        check(VersionPayload.self, seed: 1, fixedLayout: false, minSize: 4) { r in
            switch r.int(0 ... 5) {
            case 0: VersionPayload(major: r.u16(), minor: r.u16(), capabilities: nil, rawJSON: [])
            case 1: VersionPayload(major: r.u16(), minor: r.u16(), capabilities: nil)
            default: VersionPayload(major: r.u16(), minor: r.u16(), capabilities: Self.versionCaps(&r))
            }
        }
    }

    @Test func dmaMap() {
        check(DMAMapRequest.self, seed: 2, fixedLayout: true, minSize: 32) { r in
            DMAMapRequest(argsz: r.interesting32(), flags: DMAMapFlags(rawValue: r.interesting32()),
                          offset: r.interesting64(), address: r.interesting64(), size: r.interesting64())
        }
    }

    @Test func dmaUnmap() {
        check(DMAUnmapRequest.self, seed: 3, fixedLayout: true, minSize: 24) { r in
            let flags = DMAUnmapFlags(rawValue: r.bool() ? r.u32() : UInt32(r.int(0 ... 3)))
            return DMAUnmapRequest(argsz: r.interesting32(), flags: flags, address: r.interesting64(), size: r.interesting64(),
                                   bitmap: flags.contains(.getDirtyBitmap) ? DirtyBitmapHeader(pgsize: r.u64(), size: r.u64()) : nil)
        }
    }

    @Test func deviceInfo() {
        check(DeviceInfo.self, seed: 4, fixedLayout: false, minSize: 16) { r in
            var flags = DeviceInfoFlags(rawValue: r.interesting32())
            switch r.int(0 ... 2) {
            case 0:
                return DeviceInfo(argsz: r.interesting32(), flags: flags, numRegions: r.interesting32(), numIRQs: r.interesting32())
            case 1:
                flags.remove(.caps)
                return DeviceInfo(argsz: r.interesting32(), flags: flags, numRegions: r.interesting32(),
                                  numIRQs: r.interesting32(), capOffset: r.bool() ? 0 : r.u32())
            default:
                return .extended(flags: flags, numRegions: r.u32(), numIRQs: r.u32(),
                                 capabilities: (0 ..< r.int(0 ... 4)).map { _ in Self.deviceCap(&r) })
            }
        }
    }

    @Test func regionInfoRequest() {
        check(RegionInfoRequest.self, seed: 5, fixedLayout: true, minSize: 32) { r in
            RegionInfoRequest(argsz: r.interesting32(), flags: r.interesting32(), index: r.interesting32(),
                              capOffset: r.interesting32(), size: r.interesting64(), offset: r.interesting64())
        }
    }

    @Test func regionInfo() {
        check(RegionInfo.self, seed: 6, fixedLayout: false, minSize: 32) { r in
            let full = RegionInfo(index: r.interesting32(), flags: RegionInfoFlags(rawValue: r.interesting32()),
                                  size: r.interesting64(), offset: r.interesting64(),
                                  capabilities: (0 ..< r.int(0 ... 4)).map { _ in Self.regionCap(&r) })
            switch r.int(0 ... 3) {
            case 0: return full.reply(forArgsz: r.interesting32())
            case 1:
                var flags = RegionInfoFlags(rawValue: r.u32())
                flags.remove(.caps)
                return RegionInfo(argsz: r.u32(), flags: flags, index: r.u32(), capOffset: r.u32(), size: r.u64(), offset: r.u64())
            default: return full
            }
        }
    }

    @Test func regionIOFDs() {
        check(RegionIOFDsRequest.self, seed: 7, fixedLayout: true, minSize: 16) { r in
            RegionIOFDsRequest(argsz: r.interesting32(), flags: r.interesting32(), index: r.interesting32(), count: r.interesting32())
        }
        check(RegionIOFDsReply.self, seed: 8, fixedLayout: false, minSize: 16) { r in
            if r.int(0 ... 3) == 0 {
                // Truncated form: header only, count says how many would follow.
                return RegionIOFDsReply(argsz: r.u32(), flags: 0, index: r.u32(), count: r.u32(), entries: [])
            }
            let entries = (0 ..< r.int(0 ... 5)).map { _ in
                IOFDEntry(offset: r.interesting64(), size: r.interesting64(), fdIndex: r.interesting32(),
                          type: UInt32(r.int(0 ... 2)), flags: r.interesting32(), datamatch: r.u64())
            }
            return RegionIOFDsReply(index: r.u32(), entries: entries)
        }
    }

    @Test func irqs() {
        check(IRQInfo.self, seed: 9, fixedLayout: true, minSize: 16) { r in
            IRQInfo(argsz: r.interesting32(), flags: IRQInfoFlags(rawValue: r.interesting32()), index: r.interesting32(), count: r.interesting32())
        }
        check(SetIRQs.self, seed: 10, fixedLayout: false, minSize: 20) { r in
            let data = r.bytes(upTo: 16)
            return SetIRQs(argsz: r.bool() ? nil : r.interesting32(), flags: SetIRQFlags(rawValue: r.interesting32()),
                           index: r.interesting32(), start: r.interesting32(),
                           count: r.bool() ? UInt32(data.count) : r.interesting32(), data: data)
        }
    }

    @Test func regionAccess() {
        check(RegionAccess.self, seed: 11, fixedLayout: false, minSize: 16) { r in
            let data = r.bool() ? [] : r.bytes(upTo: 64)
            return RegionAccess(offset: r.interesting64(), region: r.interesting32(),
                                count: r.bool() ? UInt32(data.count) : r.interesting32(), data: data)
        }
        check(WriteMulti.self, seed: 12, fixedLayout: true, minSize: 8) { r in
            WriteMulti(entries: (0 ..< r.int(0 ... 10)).map { _ in
                WriteMultiEntry(offset: r.interesting64(), region: r.interesting32(), count: UInt32(r.int(0 ... 9)), data: r.u64())
            })
        }
        check(WriteMultiReply.self, seed: 13, fixedLayout: true, minSize: 8) { r in WriteMultiReply(completed: r.interesting64()) }
    }

    @Test func dmaAccess() {
        check(DMAAccess.self, seed: 14, fixedLayout: false, minSize: 16) { r in
            let data = r.bool() ? [] : r.bytes(upTo: 64)
            return DMAAccess(address: r.interesting64(), count: r.bool() ? UInt64(data.count) : r.interesting64(), data: data)
        }
    }

    @Test func deviceFeature() {
        check(DeviceFeature.self, seed: 15, fixedLayout: false, minSize: 8) { r in
            DeviceFeature(argsz: r.interesting32(), flags: r.interesting32(), data: r.bytes(upTo: 48))
        }
        check(MigrationFeatureFlags.self, seed: 16, fixedLayout: true, minSize: 8) { r in MigrationFeatureFlags(rawValue: r.interesting64()) }
        check(MigDeviceState.self, seed: 17, fixedLayout: true, minSize: 8) { r in
            MigDeviceState(deviceState: r.interesting32(), dataFD: r.interesting32())
        }
        check(DMALoggingStart.self, seed: 18, fixedLayout: true, minSize: 16) { r in
            DMALoggingStart(pageSize: r.interesting64(),
                            ranges: (0 ..< r.int(0 ... 6)).map { _ in DMALoggingRange(iova: r.interesting64(), length: r.interesting64()) })
        }
        check(DMALoggingReport.self, seed: 19, fixedLayout: false, minSize: 24) { r in
            DMALoggingReport(iova: r.interesting64(), length: r.interesting64(), pageSize: r.interesting64(),
                             bitmap: (0 ..< r.int(0 ... 6)).map { _ in r.u64() })
        }
        check(MigDataSize.self, seed: 20, fixedLayout: true, minSize: 8) { r in MigDataSize(stopCopyLength: r.interesting64()) }
    }

    @Test func migrationData() {
        check(MigDataRead.self, seed: 21, fixedLayout: true, minSize: 8) { r in MigDataRead(argsz: r.interesting32(), size: r.interesting32()) }
        check(MigDataReadReply.self, seed: 22, fixedLayout: true, minSize: 8) { r in
            let data = r.bytes(upTo: 64)
            return r.bool() ? MigDataReadReply(data: data) : MigDataReadReply(argsz: r.interesting32(), size: UInt32(data.count), data: data)
        }
        check(MigDataWrite.self, seed: 23, fixedLayout: true, minSize: 8) { r in
            let data = r.bytes(upTo: 64)
            return r.bool() ? MigDataWrite(data: data) : MigDataWrite(argsz: r.interesting32(), size: UInt32(data.count), data: data)
        }
    }

    /// Random bytes thrown at every decoder and at the tracer: any outcome is
    /// fine except a crash, and the tracer must always produce a line.
    @Test func randomBytesNeverCrash() {
        var r = SplitMix64(seed: 99)
        var decodedSomething = 0
        for _ in 0 ..< 2000 {
            let bytes = r.bytes(upTo: 96)
            let decoders: [([UInt8]) throws -> Void] = [
                { b in _ = try VersionPayload(payload: b) },
                { b in _ = try DeviceInfo(payload: b) },
                { b in _ = try RegionInfo(payload: b) },
                { b in _ = try RegionIOFDsReply(payload: b) },
                { b in _ = try WriteMulti(payload: b) },
                { b in _ = try DMALoggingStart(payload: b) },
                { b in _ = try MigDataReadReply(payload: b) },
                { b in _ = try DMAUnmapRequest(payload: b) },
                { b in _ = try DMAAccess.decodeDMAReadReply(b, expectedCount: UInt64(r.int(0 ... 80))) },
            ]
            for decode in decoders {
                if (try? decode(bytes)) != nil { decodedSomething += 1 }
            }
            let header = MessageHeader(messageID: r.u16(), command: Command(UInt16(r.int(0 ... 20))), messageSize: 0,
                                       flags: UInt32(r.int(0 ... 0x3f)), errorNumber: r.u32())
            #expect(!traceDescription(header: header, payload: bytes).isEmpty)
            #expect(!traceDescription(message: bytes).isEmpty)
        }
        // Some random inputs are valid (e.g. any 16+ bytes is a DMAAccess-sized
        // unmap); the point is that nothing trapped.
        #expect(decodedSomething > 0)
    }
}
