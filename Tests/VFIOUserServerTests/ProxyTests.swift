import Glibc
import Testing
import TestSupport
import VFIOUserCapture
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserProxy
import VFIOUserTransport

/// `vfu proxy` between a real client and server: fds and bytes in both directions,
/// server-to-client requests, posted writes, malformed input, the capture it writes,
/// and no leaks over many connections.
@Suite(.serialized) struct ProxyTests {
    static let base: UInt64 = 0x4000_0000

    @Test func fdsAndBytesGoThroughInBothDirections() throws {
        let s = try InProcessServer(tag: "pxfd")
        defer { s.stop() }
        let p = try InProcessProxy(upstream: s.path, tag: "pxfd")
        defer { p.stop() }
        let c = try makeClient(p.path)
        // Client → server fds: DMA memory the device writes through its own mapping,
        // and an eventfd it signals.
        let mem = try ClientMemory(size: 1 << 20)
        try c.dmaMap(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        let irq = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 1, count: 1)[0]
        try Doorbell.program(c, address: Self.base + 0x100, length: 64, pattern: 0x5eed_0000, vector: 1)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(mem.read(at: 0x100, count: 4) == [0x00, 0x00, 0xed, 0x5e], "the device wrote through the forwarded memfd")
        #expect(EventFD.wait(irq.rawValue, timeoutMs: 2000) == 1, "the forwarded eventfd fired")
        // Server → client fd: an mmap-able BAR, written through our mapping, read back by message.
        let (info, mapping) = try c.mapRegion(2)
        #expect(info.flags.contains(.mmap))
        mapping.write(at: 0x40, [1, 2, 3, 4])
        #expect(try c.read(region: 2, offset: 0x40, count: 4) == [1, 2, 3, 4])
        c.close()
        #expect(p.settle())

        let records = try p.records()
        let map = records.first { $0.direction == .clientToServer && (try? MessageHeader.decode($0.message))?.command == .dmaMap }
        #expect(map?.fds == [CapturedFD(kind: .memfd, size: 1 << 20)])
        let setIRQs = records.first { $0.direction == .clientToServer && (try? MessageHeader.decode($0.message))?.command == .deviceSetIRQs }
        #expect(setIRQs?.fds == [CapturedFD(kind: .eventfd)])
        let regionInfo = records.first {
            $0.direction == .serverToClient && !$0.fds.isEmpty && (try? MessageHeader.decode($0.message))?.command == .deviceGetRegionInfo
        }
        #expect(regionInfo?.fds.first?.kind == .memfd)
        // Every command that asked for a reply has one, in the other direction, after it.
        for (i, r) in records.enumerated() where r.direction == .clientToServer {
            let h = try MessageHeader.decode(r.message)
            guard !h.noReply, !h.isReply else { continue }
            let reply = records[(i + 1)...].first { $0.direction == .serverToClient && (try? MessageHeader.decode($0.message))?.messageID == h.messageID }
            #expect(reply != nil, "\(h.command) #\(h.messageID) has its reply in the capture")
        }
        #expect(records.allSatisfy { $0.connection == 1 && $0.message.count == $0.originalLength })
        #expect(zip(records, records.dropFirst()).allSatisfy { $0.timestampMicros <= $1.timestampMicros })
    }

    @Test func serverRequestsAndPostedWritesGoThrough() throws {
        let s = try InProcessServer(tag: "pxdma")
        defer { s.stop() }
        let p = try InProcessProxy(upstream: s.path, tag: "pxdma", validate: true)
        defer { p.stop() }
        let c = try makeClient(p.path)
        let mem = try ClientMemory(size: 64 << 10)
        try c.dmaMapWithoutFD(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        // FILL: the server sends DMA_WRITE while our REGION_WRITE waits; CHECKSUM: DMA_READ.
        try Doorbell.program(c, address: Self.base + 0x100, length: 512, pattern: 0x1000_0000)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(c.servedDMAWrites >= 1)
        let data = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        mem.write(at: 0x2000, data)
        try Doorbell.program(c, address: Self.base + 0x2000, length: 3000)
        try Doorbell.ring(c, Doorbell.checksum)
        #expect(c.servedDMAReads >= 1)
        #expect(try Doorbell.read(c, Doorbell.result) == fnv1a(data))
        // A posted doorbell and posted scratch write: no reply, and the next read sees them.
        try c.write32(region: 0, offset: Doorbell.scratch, 0x600d_cafe, posted: true)
        #expect(try Doorbell.read(c, Doorbell.scratch) == 0x600d_cafe)
        c.close()
        #expect(p.settle())

        let records = try p.records()
        let headers = records.map { try? MessageHeader.decode($0.message) }
        #expect(zip(records, headers).contains { $0.direction == .serverToClient && $1?.command == .dmaWrite && $1?.isReply == false })
        #expect(zip(records, headers).contains { $0.direction == .clientToServer && $1?.command == .dmaRead && $1?.isReply == true })
        let posted = zip(records, headers).filter { $0.direction == .clientToServer && $1?.noReply == true }.compactMap { $1?.messageID }
        #expect(!posted.isEmpty)
        for id in posted {
            #expect(!zip(records, headers).contains { $0.direction == .serverToClient && $1?.isReply == true && $1?.messageID == id },
                    "no reply to the posted #\(id)")
        }
    }

    struct Malformed: Sendable, CustomStringConvertible {
        var name: String
        var bytes: [UInt8]
        var fds = 0
        var afterVersion = true
        var description: String { name }
    }

    static func message(_ id: UInt16, _ command: UInt16, size: UInt32? = nil, flags: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        MessageHeader(messageID: id, command: Command(command), messageSize: size ?? UInt32(16 + payload.count), flags: flags).bytes + payload
    }

    static let malformed: [Malformed] = [
        Malformed(name: "msg_size below 16", bytes: message(2, 4, size: 8)),
        Malformed(name: "msg_size beyond the limit", bytes: message(2, 9, size: 64 << 20)),
        Malformed(name: "unknown command", bytes: message(2, 99)),
        Malformed(name: "type bits 3", bytes: message(2, 4, flags: 3, DeviceInfo(argsz: 16).encoded)),
        Malformed(name: "a reply from the client", bytes: message(2, 4, flags: 1, DeviceInfo(argsz: 16).encoded)),
        Malformed(name: "ends mid-message", bytes: Array(message(2, 9, RegionAccess(offset: 0, region: 7, count: 4).encoded).prefix(20))),
        Malformed(name: "GET_INFO argsz 8", bytes: message(2, 4, DeviceInfo(argsz: 8).encoded)),
        Malformed(name: "an fd on GET_INFO", bytes: message(2, 4, DeviceInfo(argsz: 16).encoded), fds: 1),
        Malformed(name: "17 fds", bytes: message(2, 8, SetIRQs(flags: [.dataEventFD, .actionTrigger], index: 2, start: 0, count: 17).encoded), fds: 17),
        Malformed(name: "first message not VERSION", bytes: message(1, 4, DeviceInfo(argsz: 16).encoded), afterVersion: false),
        Malformed(name: "VERSION without NUL", bytes: message(1, 1, [0, 0, 0, 0, 0x7b, 0x7d]), afterVersion: false),
        Malformed(name: "REGION_WRITE short of its count", bytes: message(2, 10, RegionAccess(offset: 0x3c, region: 7, count: 4, data: [1]).encoded)),
        Malformed(name: "garbage", bytes: [0xde, 0xad, 0xbe, 0xef, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]),
    ]

    @Test func malformedInputBehavesAsWithoutTheProxy() throws {
        let s = try InProcessServer(tag: "pxbad")
        defer { s.stop() }
        let p = try InProcessProxy(upstream: s.path, tag: "pxbad")
        defer { p.stop() }
        let version = Self.message(1, 1, VersionPayload(capabilities: VFIOUserClient.defaultCapabilities).encoded)
        for m in Self.malformed {
            let fds = try (0..<m.fds).map { _ in try EventFD.create() }
            let raw = fds.map(\.rawValue)
            let direct = try exchange(path: s.path, prefix: m.afterVersion ? version : [], bytes: m.bytes, fds: raw)
            let proxied = try exchange(path: p.path, prefix: m.afterVersion ? version : [], bytes: m.bytes, fds: raw)
            #expect(proxied == direct, "\(m.name): \(proxied.count) bytes through the proxy, \(direct.count) direct")
            #expect(!direct.isEmpty || m.name == "ends mid-message", "\(m.name): the server answered something")
        }
        #expect(p.settle(), "every session ended")
    }

    @Test func aThousandConnectionsLeaveTheProxysFDsAndThreadsFlat() throws {
        let served = try ServedDevice(tag: "pxleak")
        defer { served.stop() }
        let listen = served.dir + "/p.sock"
        let proxy = try VFUProcess(arguments: ["proxy", "--listen", listen, "--connect", served.path, "--log-level", "error",
                                               "--pcap", served.dir + "/c.pcapng", "--snap-length", "4096", "--validate"],
                                   stderrPath: served.dir + "/proxy.err")
        defer { proxy.kill() }
        let version = Self.message(1, 1, VersionPayload(capabilities: VFIOUserClient.defaultCapabilities).encoded)
        func cycle() throws {
            let s = try connectRetrying(listen)
            defer { s.fd.close() }
            try s.send(version)
            guard let reply = try s.receive(maxMessageSize: 4096, maxFDs: 0), reply.header.isReply, !reply.header.isError else {
                throw TestFailure("no VERSION reply through the proxy")
            }
        }
        for _ in 0..<20 { try cycle() }
        let fds = proxy.stableFDCount()
        let threads = proxy.value({ proxy.threadCount }, settlingTo: proxy.threadCount)
        for _ in 0..<1000 { try cycle() }
        #expect(proxy.fdCount(settlingTo: fds) == fds, "fds after 1000 cycles: \(proxy.fdTable)")
        #expect(proxy.value({ proxy.threadCount }, settlingTo: threads) == threads, "threads after 1000 cycles")
        #expect(proxy.isAlive)
        let records = try Pcapng.records(in: readFileBytes(served.dir + "/c.pcapng"))
        #expect(records.count >= 2 * 1020, "every VERSION and its reply was captured (\(records.count))")
        #expect(Set(records.map(\.connection)).count >= 1020)
    }

    @Test func aClientOfAProxyWithoutServerSeesItClose() throws {
        let dir = makeTempDir("pxnone")
        defer { removeTempDir(dir) }
        let p = try InProcessProxy(upstream: dir + "/nobody.sock", tag: "pxnone")
        defer { p.stop() }
        for _ in 0..<3 {
            let peer = try RawPeer(path: p.path)
            // The proxy may already have closed us: a failed send is the same answer.
            try? peer.sendRaw(Self.message(1, 1, VersionPayload(capabilities: VFIOUserClient.defaultCapabilities).encoded))
            #expect(peer.receive().isClosed, "as if no server were listening")
            peer.close()
        }
        #expect(p.proxy.sessionCounts.total == 0)
    }

    @Test func largeMessagesKeepTheProxysMemoryBounded() throws {
        let served = try ServedDevice(tag: "pxmem")
        defer { served.stop() }
        let listen = served.dir + "/p.sock"
        let proxy = try VFUProcess(arguments: ["proxy", "--listen", listen, "--connect", served.path, "--log-level", "error",
                                               "--pcap", "/dev/null", "--validate"],
                                   stderrPath: served.dir + "/proxy.err")
        defer { proxy.kill() }
        let c = try makeClient(listen)
        defer { c.close() }
        try c.writeConfig16(0x04, Cmd.memory)
        func rss() -> Int {
            let status = readWholeFile("/proc/\(proxy.pid)/status")
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        // BAR2 is 1 MiB of RAM: each read is a 1 MiB reply, four times the proxy's buffer.
        for _ in 0..<10 { #expect(try c.read(region: 2, offset: 0, count: 1 << 20).count == 1 << 20) }
        let before = rss()
        for _ in 0..<300 { _ = try c.read(region: 2, offset: 0, count: 1 << 20) }
        let after = rss()
        #expect(before > 0 && after - before < 8 << 10, "RSS \(before) KiB -> \(after) KiB after 300 MiB through the proxy")
    }

    @Test func serveAndProxyCaptureTheSameMessages() throws {
        let dir = makeTempDir("pxsame")
        defer { removeTempDir(dir) }
        let served = try VFUProcess.serve(socket: dir + "/s.sock", extra: ["--pcap", dir + "/server.pcapng"])
        defer { served.kill() }
        let p = try InProcessProxy(upstream: dir + "/s.sock", tag: "pxsame")
        defer { p.stop() }
        let c = try makeClient(p.path)
        _ = try c.deviceInfo()
        for i in 0..<9 { _ = try c.regionInfo(UInt32(i)) }
        _ = try c.readConfig(offset: 0, count: 256)
        let irq = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 0, count: 2)
        #expect(irq.count == 2)
        try c.write32(region: 0, offset: Doorbell.scratch, 7, posted: true)
        try c.reset()
        c.close()
        #expect(p.settle())
        served.signal(SIGTERM)
        #expect(served.wait(timeoutMs: 5000) != nil)
        let proxied = try p.records()
        let server = try Pcapng.records(in: readFileBytes(dir + "/server.pcapng"))
        #expect(proxied.count > 20)
        #expect(server.map(\.message) == proxied.map(\.message), "the same bytes in the same order")
        #expect(server.map(\.direction) == proxied.map(\.direction))
        #expect(server.map(\.fds) == proxied.map(\.fds))
    }

    @Test func serveStrictRefusesWhatALenientServerAccepts() throws {
        let dir = makeTempDir("pxstrict")
        defer { removeTempDir(dir) }
        // A command whose error_no is not 0 (the spec reserves it): served normally, refused under --strict.
        let request = MessageHeader(messageID: 2, command: .deviceGetInfo, messageSize: 32, errorNumber: 5).bytes
            + DeviceInfo(argsz: 16).encoded
        var results: [Bool: Incoming] = [:]
        for strict in [false, true] {
            let sock = dir + "/s\(strict).sock"
            let served = try VFUProcess.serve(socket: sock, extra: strict ? ["--strict", "--log-level", "warning"] : [])
            defer { served.kill() }
            let peer = try RawPeer(path: sock)
            try peer.negotiate()
            try peer.sendRaw(request)
            results[strict] = peer.receive()
            #expect(peer.inSync(), "the connection goes on (strict: \(strict))")
            peer.close()
            served.signal(SIGTERM)
            _ = served.wait(timeoutMs: 5000)
            if strict {
                let err = served.stderr
                #expect(err.contains("strict: refusing DEVICE_GET_INFO"), "\(err)")
                #expect(err.contains("[header.error-no]"), "\(err)")
            }
        }
        #expect(errorNumber(results[false]!) == nil && results[false]?.message?.header.isReply == true, "lenient: \(results[false]!)")
        #expect(errorNumber(results[true]!) == VFIOErrno.EINVAL.rawValue, "strict: \(results[true]!)")
    }

    @Test func replayFindsNoDifferenceOnTheSameDeviceAndNamesThemOnAnother() throws {
        let s = try InProcessServer(tag: "pxrep")
        defer { s.stop() }
        let p = try InProcessProxy(upstream: s.path, tag: "pxrep")
        defer { p.stop() }
        let c = try makeClient(p.path)
        let mem = try ClientMemory(size: 1 << 16)
        try c.dmaMap(mem, address: Self.base)
        _ = try c.deviceInfo()
        for i in 0..<9 { _ = try c.regionInfo(UInt32(i)) }
        for i in 0..<5 { _ = try c.irqInfo(UInt32(i)) }
        _ = try c.readConfig(offset: 0, count: 64)
        _ = try c.enableEventFDs(index: IRQIndex.msi.rawValue, start: 0, count: 1)
        try c.dmaUnmap(address: Self.base, size: 1 << 16)
        c.close()
        #expect(p.settle())
        let records = try p.records()

        let same = try InProcessServer(tag: "pxrep2")
        defer { same.stop() }
        let report = try Replayer(records: records).run(socketPath: same.path)
        #expect(report.differences.isEmpty, "\(report.differences)")
        #expect(report.compared == report.identical && report.compared > 15)

        let other = try InProcessServer(spec: "minimal.json", tag: "pxrep3")
        defer { other.stop() }
        let diff = try Replayer(records: records).run(socketPath: other.path)
        #expect(!diff.differences.isEmpty)
        #expect(diff.differences.contains { $0.contains("DEVICE_GET_REGION_INFO") || $0.contains("DEVICE_GET_IRQ_INFO") }, "\(diff.differences)")
    }
}

/// The dissector on what only a client library sends: device-info capabilities,
/// dirty-page logging, REGION_WRITE_MULTI. tshark decodes a capture of them
/// (scripts/capture_check.py); skipped where tshark is not installed (CI installs it).
@Suite struct DissectorTests {
    static let tshark = access("/usr/bin/tshark", X_OK) == 0

    @Test(.enabled(if: tshark)) func tsharkDecodesDeviceInfoCapsDirtyLoggingAndWriteMulti() throws {
        let zpci = try InProcessServer(spec: "zpci.json", tag: "dzpci")
        defer { zpci.stop() }
        let p1 = try InProcessProxy(upstream: zpci.path, tag: "dzpci")
        defer { p1.stop() }
        var caps = VFIOUserClient.defaultCapabilities
        caps.extensions = ["device-info-caps": "1"]
        caps.writeMultiple = true
        let c1 = try makeClient(p1.path, capabilities: caps)
        let info = try c1.deviceInfoWithCapabilities()
        #expect(!info.capabilities.isEmpty)
        c1.close()
        #expect(p1.settle())
        #expect(try check(p1.capturePath, [
            "vfio-user.command == 4 && vfio-user.device_info.cap_offset == 24",
            "vfio-user.cap.device_id == 1", "vfio-user.cap.device_id == 2",
        ]))

        let vf = try InProcessServer(spec: "migratable-vf.json", tag: "dvf")
        defer { vf.stop() }
        let p2 = try InProcessProxy(upstream: vf.path, tag: "dvf")
        defer { p2.stop() }
        let c2 = try makeClient(p2.path, capabilities: caps)
        let mem = try ClientMemory(size: 1 << 20)
        try c2.dmaMap(mem, address: 0x1_0000_0000)
        try c2.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: 0x1_0000_0000, length: 1 << 20)])
        _ = try c2.dirtyBitmap(iova: 0x1_0000_0000, length: 1 << 20, pageSize: 4096)
        try c2.stopDirtyLogging()
        try c2.post(.regionWriteMulti, payload: WriteMulti(entries: [
            WriteMultiEntry(offset: 0x08, region: 0, count: 4, data: 0x1234),
            WriteMultiEntry(offset: 0x0c, region: 0, count: 4, data: 0x5678),
        ]).encoded)
        _ = try c2.deviceInfo()
        c2.close()
        #expect(p2.settle())
        #expect(try check(p2.capturePath, [
            "vfio-user.feature.index == 6 && vfio-user.logging.num_ranges == 1 && vfio-user.logging.length == 0x100000",
            "vfio-user.feature.index == 8 && vfio-user.flags.type == 1 && vfio-user.logging.bitmap",
            "vfio-user.feature.index == 7",
            "vfio-user.command == 15 && vfio-user.write_multi.count == 2 && vfio-user.write_multi.data == 0x5678",
        ]))
    }

    /// Runs scripts/capture_check.py with `expect` filters; true when it passed.
    private func check(_ capture: String, _ expect: [String]) throws -> Bool {
        let out = capture + ".check"
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&fa, 1, 2)
        let args = ["python3", repositoryRoot + "/scripts/capture_check.py", capture] + expect.flatMap { ["--expect", $0] }
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, "python3", &fa, nil, argv, environ)
        guard rc == 0 else { throw TestFailure("cannot run python3: \(rc)") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let ok = (status & 0x7f) == 0 && (status >> 8) & 0xff == 0
        if !ok { Issue.record("capture_check failed:\n\(readWholeFile(out))") }
        return ok
    }
}
