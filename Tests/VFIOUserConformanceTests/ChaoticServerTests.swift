import Glibc
import Synchronization
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserConformance
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu conform` and `vfu inspect` talk to servers that may be broken in any way.
/// A server that answers at random (plausible replies with wild values, garbage,
/// errors with any errno, wrong ids and commands, silence, hang-ups, requests of its
/// own) must get a report out of the suite, in bounded time, and never a crash.
@Suite struct ChaoticServerTests {
    @Test(arguments: 0..<40)
    func theSuiteReportsOnAChaoticServer(seed: Int) throws {
        let path = temporarySocketPath("chaos")
        let listener = try UnixListener(path: path)
        let rng = ChaosSource(Chaos(rng: SplitMix64(seed: UInt64(seed))))
        spawnThread(name: "chaos-server") {
            while let s = try? listener.accept() {
                spawnThread(name: "chaos-conn") { Chaos.serve(s, rng) }
            }
        }
        defer { listener.close() }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let report = ConformanceSuite(socketPath: path, timeoutMs: 100, disruptive: seed % 2 == 0).run()
        var te = timespec()
        clock_gettime(CLOCK_MONOTONIC, &te)
        #expect(!report.results.isEmpty)
        #expect(!report.text.isEmpty && report.json.hasPrefix("{"))
        #expect(te.tv_sec - ts.tv_sec < 30, "the suite took \(te.tv_sec - ts.tv_sec) s")

        // What `vfu inspect` asks, through the client library: errors are fine, traps are not.
        for _ in 0..<5 {
            guard let c = try? VFIOUserClient(path: path, negotiate: false) else { continue }
            defer { c.close() }
            c.timeoutMs = 100
            guard (try? c.negotiate()) != nil else { continue }
            let info = try? c.deviceInfo()
            for i in 0..<min(info?.numRegions ?? 10, 20) { _ = try? c.regionInfo(i) }
            for i in 0..<UInt32(5) { _ = try? c.irqInfo(i) }
            if let cfg = try? c.readConfig(offset: 0, count: 256) {
                _ = ConfigSpaceReport.describe(cfg, regions: [])
            }
            _ = try? c.read32(region: 0, offset: 0)
            _ = try? c.migrationState()
            _ = try? c.dirtyBitmap(iova: 0, length: 1 << 20, pageSize: 4096)
        }
    }

    /// What `vfu inspect` prints, for config spaces full of random bytes and
    /// capability chains that loop or point outside.
    @Test func configSpaceReportsSurviveAnyBytes() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let size = [64, 256, 4096, Int.random(in: 0..<5000, using: &rng)].randomElement(using: &rng)!
            var cfg = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if size > 0x40 && Bool.random(using: &rng) {
                cfg[0x06] |= 0x10                      // capability list present
                cfg[0x34] = 0x40
                cfg[0x41] = 0x40                       // a loop
            }
            let regions: [(UInt32, RegionInfo)] = (0..<UInt32.random(in: 0..<12, using: &rng)).map {
                ($0, RegionInfo(index: $0, flags: RegionInfoFlags(rawValue: UInt32.random(in: 0...15, using: &rng)),
                                size: [0, 1, 4096, UInt64.max, UInt64.random(in: 0...UInt64.max, using: &rng)].randomElement(using: &rng)!))
            }
            _ = ConfigSpaceReport.describe(cfg, regions: regions)
            _ = ConfigSpaceReport.dump(cfg)
            #expect(ConfigSpaceReport.capabilityList(cfg).count <= 48)
            _ = ConfigSpaceReport.extendedCapabilityList(cfg)
        }
    }
}

/// One generator shared by the chaotic server's connections.
final class ChaosSource: Sendable {
    let chaos: Locked<Chaos>
    init(_ c: Chaos) { chaos = Locked(c) }
}

/// The chaotic server's choices.
struct Chaos {
    var rng: SplitMix64
    mutating func next() -> UInt64 { rng.next() }
    mutating func percent() -> Int { Int(next() % 100) }
    mutating func wild() -> UInt64 {
        [0, 1, 8, 9, 16, 100, 4096, 0xFFFF_FFFF, 1 << 40, UInt64.max, next()][Int(next() % 11)]
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }

    /// A reply that decodes, with values anywhere in their range.
    mutating func plausible(_ m: ReceivedMessage) -> [UInt8] {
        switch m.header.command {
        case .version:
            let fds = Int(truncatingIfNeeded: wild()), xfer = Int(truncatingIfNeeded: wild()), maps = Int(truncatingIfNeeded: wild())
            let caps = VersionCapabilities(maxMsgFDs: fds, maxDataXferSize: xfer, pgsizes: wild(), maxDMAMaps: maps)
            return VersionPayload(major: UInt16(next() % 2), minor: UInt16(next() % 2), capabilities: caps).encoded
        case .deviceGetInfo:
            return DeviceInfo(argsz: UInt32(truncatingIfNeeded: wild()), flags: DeviceInfoFlags(rawValue: UInt32(truncatingIfNeeded: next())),
                              numRegions: UInt32(next() % 200), numIRQs: UInt32(next() % 60)).encoded
        case .deviceGetRegionInfo:
            let index = (try? RegionInfoRequest(message: m.bytes))?.index ?? 0
            return RegionInfo(index: percent() < 80 ? index : UInt32(truncatingIfNeeded: next()),
                              flags: RegionInfoFlags(rawValue: UInt32(truncatingIfNeeded: next()) & 0xF), size: wild()).encoded
        case .deviceGetIRQInfo:
            return IRQInfo(argsz: 16, flags: IRQInfoFlags(rawValue: UInt32(next() % 16)), index: UInt32(next() % 6), count: UInt32(truncatingIfNeeded: wild())).encoded
        case .regionRead:
            let req = try? RegionAccess(message: m.bytes)
            let n = percent() < 70 ? Int(min(req?.count ?? 4, 4096)) : Int(next() % 5000)
            return RegionAccess(offset: req?.offset ?? 0, region: req?.region ?? 0, count: UInt32(truncatingIfNeeded: wild()), data: bytes(n)).encoded
        default:
            return bytes(Int(next() % 64))
        }
    }

    static func serve(_ s: MessageSocket, _ rng: ChaosSource) {
        defer { s.fd.close() }
        while let m = try? s.receive(maxMessageSize: 1 << 21, maxFDs: 16) {
            m.closeFDs()
            let h = m.header
            var roll = 0, errno: UInt32 = 0, id: UInt16 = 0, command = Command(0)
            var payload: [UInt8] = [], extra: [UInt8] = []
            rng.chaos.withLock { c in
                roll = c.percent()
                payload = c.plausible(m)
                errno = UInt32(c.next() % 5000)
                id = UInt16(truncatingIfNeeded: c.next())
                command = Command(UInt16(c.next() % 20))
                extra = c.bytes(Int(c.next() % 48))
            }
            if h.noReply && roll < 80 { continue }
            do {
                switch roll {
                case 0..<55: try s.send(header: .reply(to: h, payloadSize: payload.count), payload: payload)
                case 55..<70: try s.send(header: .reply(to: h, payloadSize: extra.count), payload: extra)
                case 70..<80:
                    try s.send(header: MessageHeader(messageID: h.messageID, command: h.command, messageSize: 0,
                                                     flags: 1 | MessageHeader.errorFlag, errorNumber: errno), payload: [])
                case 80..<85:
                    try s.send(header: MessageHeader(messageID: id, command: h.command, messageSize: 0, flags: 1), payload: payload)
                case 85..<89:
                    try s.send(header: MessageHeader(messageID: h.messageID, command: command, messageSize: 0, flags: 1), payload: payload)
                case 89..<93:
                    // A request of the server's own (as DMA through messages), then the reply.
                    try s.send(header: MessageHeader(messageID: id, command: .dmaRead, messageSize: 0), payload: extra)
                    try s.send(header: .reply(to: h, payloadSize: payload.count), payload: payload)
                case 93..<97:
                    continue   // silence: the client's timeout
                default:
                    return     // hang up
                }
            } catch {
                return
            }
        }
    }
}
