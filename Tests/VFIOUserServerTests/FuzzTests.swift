import Glibc
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// Builds messages for every command, valid ones first, then mutated: fields set to
/// boundary values, bits flipped, payloads cut short, grown or replaced, fds added or
/// dropped. Framing stays consistent (msg_size matches the bytes sent), so the server
/// must answer each one on its own; BadInputTests covers broken framing.
struct MessageFuzzer {
    var rng: SplitMix64
    /// Region sizes (index → bytes), so accesses land in and around real regions.
    let regionSizes: [UInt64]

    static let interesting: [UInt64] = [
        0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 32, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001, 0xFFFF, 0x10000,
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 1 << 40, (1 << 63) - 1, 1 << 63,
        UInt64.max - 0x1000, UInt64.max - 1, UInt64.max,
    ]

    mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &rng) < percent }
    mutating func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &rng)] }
    mutating func u64() -> UInt64 { chance(60) ? pick(Self.interesting) : rng.next() }
    mutating func u32() -> UInt32 { UInt32(truncatingIfNeeded: u64()) }
    mutating func small(_ n: Int) -> Int { Int.random(in: 0..<n, using: &rng) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }

    enum FD { case memfd(Int), eventfd }

    /// A plausible request: command, payload, and the fds to attach.
    mutating func request() -> (Command, [UInt8], [FD]) {
        let region = UInt32(small(regionSizes.count + 2))
        let size = Int(region) < regionSizes.count ? regionSizes[Int(region)] : 4096
        let offset = size > 0 && chance(80) ? UInt64.random(in: 0..<size, using: &rng) & ~3 : u64()
        switch small(19) {
        case 0:
            return (.version, VersionPayload(major: 0, minor: 0, capabilities: VFIOUserClient.defaultCapabilities).encoded, [])
        case 1:
            let pages = 1 + small(16)
            let req = DMAMapRequest(flags: pick([[.read, .write], [.read], []]), offset: chance(80) ? 0 : u64(),
                                    address: chance(70) ? UInt64(small(64)) << 20 : u64(), size: chance(80) ? UInt64(pages * 4096) : u64())
            return (.dmaMap, req.encoded, chance(85) ? [.memfd(pages * 4096)] : [])
        case 2:
            let req = DMAUnmapRequest(flags: chance(20) ? .all : [], address: chance(70) ? UInt64(small(64)) << 20 : u64(),
                                      size: chance(70) ? UInt64(1 + small(16)) * 4096 : u64(),
                                      bitmap: chance(20) ? DirtyBitmapHeader(pgsize: u64(), size: u64()) : nil)
            return (.dmaUnmap, req.encoded, [])
        case 3: return (.deviceGetInfo, DeviceInfo(argsz: chance(80) ? 16 : u32()).encoded, [])
        case 4: return (.deviceGetRegionInfo, RegionInfoRequest(argsz: chance(70) ? 32 + UInt32(small(8)) * 32 : u32(), index: region).encoded, [])
        case 5: return (.deviceGetRegionIOFDs, RegionIOFDsRequest(argsz: chance(70) ? 16 + UInt32(small(4)) * 32 : u32(), index: region).encoded, [])
        case 6: return (.deviceGetIRQInfo, IRQInfo(argsz: 16, index: UInt32(small(7))).encoded, [])
        case 7:
            let count = small(5)
            let data = pick([SetIRQFlags.dataNone, .dataBool, .dataEventFD])
            let action = pick([SetIRQFlags.actionMask, .actionUnmask, .actionTrigger])
            var req = SetIRQs(argsz: 20, flags: [data, action], index: UInt32(small(6)), start: UInt32(small(4)), count: UInt32(count))
            if data == .dataBool { req.data = (0..<count).map { _ in UInt8(small(2)) }; req.argsz = UInt32(20 + count) }
            return (.deviceSetIRQs, req.encoded, data == .dataEventFD ? Array(repeating: .eventfd, count: chance(80) ? count : small(4)) : [])
        case 8:
            return (.regionRead, RegionAccess(offset: offset, region: region, count: pick([1, 2, 4, 8, UInt32(small(4096)), u32()])).encoded, [])
        case 9:
            let n = pick([1, 2, 4, 8, small(512)])
            return (.regionWrite, RegionAccess(offset: offset, region: region, data: bytes(n)).encoded, [])
        case 10: return (pick([.dmaRead, .dmaWrite]), DMAAccess(address: u64(), count: UInt64(small(64)), data: bytes(small(64))).encoded, [])
        case 11: return (.deviceReset, [], [])
        case 12: return (.dirtyPages, bytes(small(64)), [])
        case 13:
            let entries = (0..<(1 + small(4))).map { _ in
                WriteMultiEntry(offset: UInt64(small(256)) & ~3, region: UInt32(small(regionSizes.count)),
                                count: chance(90) ? pick([1, 2, 4, 8]) : u32(), data: rng.next())
            }
            return (.regionWriteMulti, WriteMulti(entries: entries).encoded, [])
        case 14, 15:
            let feature = pick([DeviceFeature.migration, DeviceFeature.migDeviceState, DeviceFeature.dmaLoggingStart,
                                DeviceFeature.dmaLoggingStop, DeviceFeature.dmaLoggingReport, DeviceFeature.migDataSize,
                                0, 3, 0x8015, 0x8016, UInt16(truncatingIfNeeded: u64())])
            let data: [UInt8]
            switch feature {
            case DeviceFeature.migDeviceState: data = MigDeviceState(deviceState: chance(80) ? UInt32(small(9)) : u32()).encoded
            case DeviceFeature.dmaLoggingStart:
                data = DMALoggingStart(pageSize: chance(60) ? 4096 << UInt64(small(20)) : u64(),
                                       ranges: (0..<small(3)).map { _ in DMALoggingRange(iova: u64(), length: u64()) }).encoded
            case DeviceFeature.dmaLoggingReport:
                data = DMALoggingReport(iova: chance(50) ? 0 : u64(), length: chance(50) ? UInt64(1 + small(64)) << 12 : u64(),
                                        pageSize: chance(50) ? 4096 << UInt64(small(20)) : u64()).encoded
            default: data = bytes(small(32))
            }
            let ops = pick([DeviceFeature.get, DeviceFeature.set, DeviceFeature.probe | DeviceFeature.get,
                            DeviceFeature.probe | DeviceFeature.set, 0, DeviceFeature.get | DeviceFeature.set])
            let req = DeviceFeature(argsz: chance(80) ? UInt32(8 + data.count) : u32(), flags: UInt32(feature) | ops, data: data)
            return (.deviceFeature, req.encoded, feature == 0x8016 && chance(30) ? [.eventfd] : [])
        case 16: return (.migDataRead, MigDataRead(argsz: chance(70) ? 8 + 4096 : u32(), size: chance(70) ? 4096 : u32()).encoded, [])
        case 17: return (.migDataWrite, MigDataWrite(data: bytes(small(256))).encoded, [])
        default: return (Command(UInt16(truncatingIfNeeded: pick([0, 19, 20, 100, 0x7FFF, 0xFFFF, u64()]))), bytes(small(64)), [])
        }
    }

    /// Damages a payload in one of several ways (or leaves it valid).
    mutating func mutate(_ p: [UInt8]) -> [UInt8] {
        var p = p
        switch small(8) {
        case 0, 1: return p
        case 2 where p.count >= 8:
            let at = small(p.count / 4) * 4
            let v = u64()
            for i in 0..<min(8, p.count - at) { p[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        case 3 where p.count >= 4:
            let at = small(p.count / 4) * 4
            let v = u32()
            for i in 0..<4 { p[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
        case 4 where !p.isEmpty:
            for _ in 0..<(1 + small(4)) { p[small(p.count)] ^= UInt8(1) << UInt8(small(8)) }
        case 5: p = Array(p.prefix(small(p.count + 1)))
        case 6: p += bytes(small(64))
        default: p = bytes(small(96))
        }
        return p
    }
}

/// Mutated messages for every command against `vfu serve` of every spec: each gets a
/// reply of its own (or, at worst, a clean close), nothing hangs or crashes, the
/// stream stays in sync, and once the peer leaves the server holds the fds it held
/// before. Seeded: VFU_FUZZ_SEED and VFU_FUZZ_MESSAGES replay or extend a run.
@Suite(.serialized) struct FuzzTests {
    static let specs = ["default.json", "express-endpoint.json", "minimal.json", "igd.json", "nvlink2.json",
                        "nvlink2-npu.json", "nvgrace.json", "pasid.json", "zpci.json", "migratable-vf.json"]

    static var seed: UInt64 {
        getenv("VFU_FUZZ_SEED").flatMap { UInt64(String(cString: $0)) } ?? 0x5EED_F022
    }
    static var messages: Int {
        getenv("VFU_FUZZ_MESSAGES").flatMap { Int(String(cString: $0)) } ?? 800
    }

    @Test(arguments: specs)
    func mutatedMessagesGetAnAnswerEachAndLeaveTheServerWhole(spec: String) throws {
        let served = try ServedDevice(tag: "fuzz", spec: specPath(spec))
        defer { served.stop() }
        let probe = try makeClient(served.path)
        let info = try probe.deviceInfo()
        let sizes = try (0..<info.numRegions).map { try probe.regionInfo($0).info.size }
        probe.close()
        var run = FuzzRun(spec: spec, served: served,
                          fuzz: MessageFuzzer(rng: SplitMix64(seed: Self.seed ^ UInt64(fnv1a(Array(spec.utf8)))), regionSizes: sizes))
        // A first quarter warms the device up: some of its resources are made on first
        // use and kept, like the irqfd watcher's thread and eventfd, which an INTx
        // unmask eventfd starts. Then the baseline.
        try Self.startLazyResources(served)
        try run.messages(Self.messages / 4)
        let fdsBefore = served.process.stableFDCount()
        let tableBefore = served.process.fdTable
        let threadsBefore = served.process.value({ served.process.threadCount }, settlingTo: -1, timeoutMs: 200)
        try run.messages(Self.messages - Self.messages / 4)
        guard served.process.isAlive else { throw run.failure("the server died") }
        #expect(served.stillServes(), "\(spec): a new client is not served after the fuzzing")
        let fdsAfter = served.process.fdCount(settlingTo: fdsBefore)
        #expect(fdsAfter == fdsBefore, "\(spec): fds held after the fuzzing peer left: \(Set(served.process.fdTable).subtracting(tableBefore))")
        #expect(served.process.value({ served.process.threadCount }, settlingTo: threadsBefore) == threadsBefore, "\(spec): threads")
        // Most messages must be answered, not dropped by closing the connection.
        #expect(run.stats.closes * 20 < Self.messages, "\(spec): \(run.stats)")
        print("fuzz \(spec): \(Self.messages) messages, \(run.stats)")
    }
}

extension FuzzTests {
    /// What a device makes on first use and keeps: the irqfd watcher's thread and
    /// eventfd, which an (un)mask eventfd on a maskable index starts.
    static func startLazyResources(_ served: ServedDevice) throws {
        let warm = try makeClient(served.path)
        defer { warm.close() }
        let unmask = try EventFD.create(nonBlocking: true)
        for i in 0..<UInt32(3) where (try? warm.irqInfo(i))?.flags.contains(.maskable) == true {
            try warm.setIRQs(index: i, flags: [.dataEventFD, .actionUnmask], start: 0, count: 1, fds: [unmask.rawValue])
            break
        }
    }

    /// Two clients fuzzing one device at once: neither gets the other's replies, no
    /// lock ordering deadlocks (a hang is a 5 s timeout), and the server ends whole.
    @Test(arguments: ["default.json", "migratable-vf.json", "igd.json"])
    func twoClientsFuzzingOneDeviceAtOnce(spec: String) throws {
        let served = try ServedDevice(tag: "fuzz2", spec: specPath(spec))
        defer { served.stop() }
        let probe = try makeClient(served.path)
        let info = try probe.deviceInfo()
        let sizes = try (0..<info.numRegions).map { try probe.regionInfo($0).info.size }
        probe.close()
        var warm = FuzzRun(spec: spec, served: served,
                           fuzz: MessageFuzzer(rng: SplitMix64(seed: Self.seed ^ 0xA11CE), regionSizes: sizes))
        try Self.startLazyResources(served)
        try warm.messages(Self.messages / 4)
        let fdsBefore = served.process.stableFDCount()
        let tableBefore = served.process.fdTable
        let results = (0..<2).map { k in
            let done = Completion<String?>()
            let seed = Self.seed ^ UInt64(k + 1) &* 0x9E37_79B9
            spawnThread(name: "fuzz-\(k)") {
                var run = FuzzRun(spec: spec, served: served, fuzz: MessageFuzzer(rng: SplitMix64(seed: seed), regionSizes: sizes))
                do { try run.messages(Self.messages / 2); done.fulfil(nil) } catch { done.fulfil("\(error)") }
            }
            return done
        }.map { $0.wait() }
        for case let failure? in results { Issue.record("\(failure)") }
        #expect(served.process.isAlive)
        #expect(served.stillServes(), "\(spec): a new client is not served after the fuzzing")
        #expect(served.process.fdCount(settlingTo: fdsBefore) == fdsBefore,
                "\(spec): fds held after both peers left: \(Set(served.process.fdTable).subtracting(tableBefore))")
    }
}

/// One fuzzing peer after another against one server.
struct FuzzRun: @unchecked Sendable {
    let spec: String
    let served: ServedDevice
    var fuzz: MessageFuzzer
    var stats = (replies: 0, errors: 0, closes: 0, expectedCloses: 0, serverRequests: 0)
    var sent = 0
    var last = ""

    init(spec: String, served: ServedDevice, fuzz: MessageFuzzer) {
        self.spec = spec
        self.served = served
        self.fuzz = fuzz
    }

    func failure(_ why: String) -> TestFailure {
        TestFailure("\(spec), seed \(FuzzTests.seed): \(why); last message: \(last)")
    }

    /// `count` messages from a new peer, which then leaves.
    mutating func messages(_ count: Int) throws {
        var peer = try RawPeer(path: served.path)
        defer { peer.close() }
        try peer.negotiate()
        var posted: Set<UInt16> = []          // NO_REPLY messages: a reply to one is a failure
        for _ in 0..<count {
            let i = sent
            sent += 1
            let (command, valid, fdKinds) = fuzz.request()
            let payload = fuzz.mutate(valid)
            var flags: UInt32 = 0
            if fuzz.chance(4) { flags |= MessageHeader.noReplyFlag }
            if fuzz.chance(2) { flags |= 1 }   // the reply bit, from a client
            var owned: [OwnedFD] = []
            for k in fdKinds {
                switch k {
                case .memfd(let size): owned.append(try MemFD.create(name: "fuzz", size: size))
                case .eventfd: owned.append(try EventFD.create(nonBlocking: true))
                }
            }
            last = "#\(i) \(command) flags 0x\(String(flags, radix: 16)) \(owned.count) fds payload \(payload.map { String($0, radix: 16) }.joined(separator: " ").prefix(200))"
            let id = try peer.send(command, payload, flags: flags, fds: owned.map(\.rawValue))
            owned.removeAll()   // ours close; the server has its own copies
            let expectsReply = flags & MessageHeader.noReplyFlag == 0
            if !expectsReply { posted.insert(id) }
            // A request longer than its layout is refused and the connection closed:
            // its extra bytes may have been the next request's (RequestLayout).
            if flags & 1 == 0, case .long = RequestLayout.check(command, payload: payload[...]) {
                try expectClose(&peer, after: id, replyAllowed: expectsReply)
                posted.removeAll()
                continue
            }

            // Read until our reply (answering the server's own DMA requests on the way).
            var answered = !expectsReply
            while !answered {
                switch peer.receive(timeoutMs: 5000) {
                case .timeout:
                    throw failure("no answer within 5 s")
                case .closed:
                    stats.closes += 1
                    guard served.process.isAlive else { throw failure("the server died") }
                    peer = try RawPeer(path: served.path)
                    try peer.negotiate()
                    posted.removeAll()
                    answered = true
                case .failed(let why):
                    throw failure("broken stream: \(why)")
                case .message(let m):
                    if !m.header.isReply {
                        // The device's DMA through messages: refuse it.
                        stats.serverRequests += 1
                        try peer.socket.send(header: MessageHeader(messageID: m.header.messageID, command: m.header.command,
                                                                   messageSize: 0, flags: 1 | MessageHeader.errorFlag,
                                                                   errorNumber: VFIOErrno.EFAULT.rawValue), payload: [], fds: [])
                        continue
                    }
                    if m.header.messageID == id {
                        guard m.header.command == command else { throw failure("reply echoes \(m.header.command)") }
                        if m.header.isError { stats.errors += 1 } else { stats.replies += 1 }
                        answered = true
                    } else if posted.contains(m.header.messageID) {
                        throw failure("#\(m.header.messageID) was sent with NO_REPLY and got a reply")
                    } else {
                        throw failure("reply to #\(m.header.messageID) while waiting for #\(id): out of sync")
                    }
                }
            }
            if i % 50 == 49 {
                guard peer.inSync() else { throw failure("a valid GET_INFO no longer gets its reply") }
                posted.removeAll()
            }
        }
    }

    /// After a request longer than its layout: at most an error reply to it, then the
    /// server closes (answering its DMA requests on the way); then a new peer.
    mutating func expectClose(_ peer: inout RawPeer, after id: UInt16, replyAllowed: Bool) throws {
        while true {
            switch peer.receive(timeoutMs: 5000) {
            case .timeout:
                throw failure("a request longer than its layout was not followed by a close")
            case .failed(let why):
                throw failure("broken stream: \(why)")
            case .closed:
                stats.expectedCloses += 1
                guard served.process.isAlive else { throw failure("the server died") }
                peer = try RawPeer(path: served.path)
                try peer.negotiate()
                return
            case .message(let m):
                if !m.header.isReply {
                    stats.serverRequests += 1
                    try? peer.socket.send(header: MessageHeader(messageID: m.header.messageID, command: m.header.command,
                                                                messageSize: 0, flags: 1 | MessageHeader.errorFlag,
                                                                errorNumber: VFIOErrno.EFAULT.rawValue), payload: [], fds: [])
                    continue
                }
                guard replyAllowed, m.header.messageID == id, m.header.isError, m.header.errorNumber == VFIOErrno.EINVAL.rawValue else {
                    throw failure("after an over-long request: \(m.header.command) #\(m.header.messageID), not EINVAL to #\(id) then a close")
                }
                stats.errors += 1
            }
        }
    }
}
