@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol

/// MIG_DEVICE_STATE over a real socket: every direct arc, the kernel's multi-arc
/// paths, illegal requests, and failure into ERROR.
@Suite struct StateMachineTests {
    typealias S = MigrationState

    /// The kernel's vfio_mig_get_next_state table (variant-devices.md §4.2), transcribed
    /// independently of the implementation. Columns: STOP RUNNING PRE_COPY PRE_COPY_P2P STOP_COPY RESUMING RUNNING_P2P.
    static let kernel: [S: [S]] = [
        .stop: [.stop, .runningP2P, .runningP2P, .runningP2P, .stopCopy, .resuming, .runningP2P],
        .running: [.runningP2P, .running, .preCopy, .runningP2P, .runningP2P, .runningP2P, .runningP2P],
        .preCopy: [.running, .running, .preCopy, .preCopyP2P, .preCopyP2P, .running, .running],
        .preCopyP2P: [.runningP2P, .runningP2P, .preCopy, .preCopyP2P, .stopCopy, .runningP2P, .runningP2P],
        .stopCopy: [.stop, .stop, .error, .error, .stopCopy, .stop, .stop],
        .resuming: [.stop, .stop, .stop, .stop, .stop, .resuming, .stop],
        .runningP2P: [.stop, .running, .running, .preCopyP2P, .stop, .stop, .runningP2P],
    ]
    static let columns: [S] = [.stop, .running, .preCopy, .preCopyP2P, .stopCopy, .resuming, .runningP2P]

    @Test func nextStateMatchesTheKernelTable() throws {
        let c = MigrationController(handler: RecordingHandler())
        for (cur, row) in Self.kernel {
            for (i, target) in Self.columns.enumerated() {
                let want: S? = row[i] == .error ? nil : row[i]
                #expect(c.nextState(from: cur, to: target) == want, "\(cur)→\(target)")
            }
            #expect(c.nextState(from: cur, to: .error) == nil)
        }
        for t in S.allCases { #expect(c.nextState(from: .error, to: t) == nil) }
    }

    @Test func withoutP2PTheP2PStatesAreSkipped() {
        let c = MigrationController(handler: RecordingHandler(), preCopy: true, p2p: false)
        #expect(c.path(from: .running, to: .stop) == [.stop])
        #expect(c.path(from: .stop, to: .running) == [.running])
        #expect(c.path(from: .preCopy, to: .stopCopy) == [.stopCopy])
        #expect(c.path(from: .stop, to: .preCopy) == [.running, .preCopy])
        #expect(c.path(from: .running, to: .runningP2P) == nil)
        #expect(c.path(from: .running, to: .preCopyP2P) == nil)
        // STOP_COPY → PRE_COPY must not loop (the kernel's loop spun on ERROR here).
        #expect(c.path(from: .stopCopy, to: .preCopy) == nil)
        let n = MigrationController(handler: RecordingHandler(), preCopy: false, p2p: false)
        #expect(n.path(from: .running, to: .preCopy) == nil)
        #expect(n.path(from: .stopCopy, to: .running) == [.stop, .running])
    }

    static let directArcs: [(S, S)] = [
        (.running, .runningP2P), (.runningP2P, .running), (.runningP2P, .stop), (.stop, .runningP2P),
        (.stop, .stopCopy), (.stopCopy, .stop), (.stop, .resuming), (.resuming, .stop),
        (.running, .preCopy), (.preCopy, .running), (.runningP2P, .preCopyP2P), (.preCopyP2P, .runningP2P),
        (.preCopy, .preCopyP2P), (.preCopyP2P, .preCopy), (.preCopyP2P, .stopCopy),
    ]

    @Test(arguments: 0..<directArcs.count)
    func everyDirectArcOverTheSocket(_ i: Int) throws {
        let (from, to) = Self.directArcs[i]
        let h = RecordingHandler()
        let served = try Served(try plainDevice(handler: h))
        let c = try served.client()
        #expect(try c.migrationFlags() == [.stopCopy, .p2p, .preCopy])
        try c.setMigrationState(from)
        #expect(try c.migrationState() == from)
        h.arcs = []
        #expect(try c.setMigrationState(to) == to)
        #expect(h.arcs.count == 1 && h.arcs[0] == (from, to))
        #expect(try c.migrationState() == to)
    }

    @Test func withoutP2PRunningAndStopAreDirect() throws {
        let h = RecordingHandler()
        let served = try Served(try plainDevice(handler: h, p2p: false))
        let c = try served.client()
        #expect(try c.migrationFlags() == [.stopCopy, .preCopy])
        try c.setMigrationState(.stop)
        try c.setMigrationState(.running)
        try c.setMigrationState(.preCopy)
        try c.setMigrationState(.stopCopy)
        #expect(h.arcs.map { "\($0.0)→\($0.1)" } == ["RUNNING→STOP", "STOP→RUNNING", "RUNNING→PRE_COPY", "PRE_COPY→STOP_COPY"])
        #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) { try c.setMigrationState(.runningP2P) }
    }

    @Test func multiArcRequestsWalkTheKernelPath() throws {
        let h = RecordingHandler()
        let served = try Served(try plainDevice(handler: h))
        let c = try served.client()
        func walk(_ target: S) throws -> [String] {
            h.arcs = []
            try c.setMigrationState(target)
            return h.arcs.map { "\($0.0)→\($0.1)" }
        }
        #expect(try walk(.stop) == ["RUNNING→RUNNING_P2P", "RUNNING_P2P→STOP"])
        #expect(try walk(.preCopy) == ["STOP→RUNNING_P2P", "RUNNING_P2P→RUNNING", "RUNNING→PRE_COPY"])
        #expect(try walk(.stopCopy) == ["PRE_COPY→PRE_COPY_P2P", "PRE_COPY_P2P→STOP_COPY"])
        #expect(try walk(.resuming) == ["STOP_COPY→STOP", "STOP→RESUMING"])
        #expect(try walk(.running) == ["RESUMING→STOP", "STOP→RUNNING_P2P", "RUNNING_P2P→RUNNING"])
        #expect(try walk(.preCopyP2P) == ["RUNNING→RUNNING_P2P", "RUNNING_P2P→PRE_COPY_P2P"])
        #expect(try walk(.running) == ["PRE_COPY_P2P→RUNNING_P2P", "RUNNING_P2P→RUNNING"])
    }

    @Test func illegalRequestsAreEINVALAndChangeNothing() throws {
        let h = RecordingHandler()
        let served = try Served(try plainDevice(handler: h))
        let c = try served.client()
        let einval = ClientError.server(.deviceFeature, .EINVAL)
        try c.setMigrationState(.stopCopy)
        h.arcs = []
        for bad: S in [.preCopy, .preCopyP2P, .error] {
            #expect(throws: einval) { try c.setMigrationState(bad) }
            #expect(try c.migrationState() == .stopCopy)
        }
        for raw: UInt32 in [8, 99, 0xFFFF_FFFF] {
            #expect(throws: einval) { try c.setMigrationState(raw: raw) }
        }
        #expect(h.arcs.isEmpty)
        #expect(try c.migrationState() == .stopCopy)
        // Without PRE_COPY support.
        let h2 = RecordingHandler()
        let s2 = try Served(try plainDevice(handler: h2, preCopy: false))
        let c2 = try s2.client()
        #expect(try c2.migrationFlags() == [.stopCopy, .p2p])
        #expect(throws: einval) { try c2.setMigrationState(.preCopy) }
        #expect(throws: einval) { try c2.setMigrationState(.preCopyP2P) }
        #expect(try c2.migrationState() == .running)
        #expect(h2.arcs.isEmpty)
    }

    @Test func aFailingArcLandsInErrorAndOnlyResetRecovers() throws {
        let h = RecordingHandler()
        h.failOn = (.runningP2P, .stop)
        let d = try plainDevice(handler: h)
        let served = try Served(d)
        let c = try served.client()
        #expect(throws: ClientError.server(.deviceFeature, .EIO)) { try c.setMigrationState(.stopCopy) }
        #expect(try c.migrationState() == .error)
        #expect(d.migration?.lastFailure?.contains("injected failure") == true)
        for t: S in [.running, .stop, .resuming, .error] {
            #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) { try c.setMigrationState(t) }
        }
        // ERROR refuses region accesses too.
        #expect(throws: ClientError.server(.regionRead, .EIO)) { _ = try c.read(region: 0, offset: 0, count: 4) }
        try c.reset()
        #expect(try c.migrationState() == .running)
        h.failOn = nil
        try c.setMigrationState(.stop)
        #expect(try c.migrationState() == .stop)
    }

    @Test func featuresWithoutMigrationAreEINVAL() throws {
        var cfg = PCIDeviceConfiguration(name: "none", identity: PCIIdentity(vendor: 0x1b36, device: 0x78))
        cfg.bars = [BARDescriptor(index: 0, size: 4096)]
        let served = try Served(try PCIDevice(configuration: cfg))
        let c = try served.client()
        #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) { _ = try c.migrationFlags() }
        #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) { _ = try c.migrationState() }
        #expect(c.migrationDataSize() == nil)
    }
}
