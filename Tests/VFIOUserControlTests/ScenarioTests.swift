import DeviceSpecs
import FoundationEssentials
import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
@testable import VFIOUserControl
import VFIOUserProtocol
import VariantDevices

/// The spec's `faults` section: validated like the rest of the spec, armed at start.
@Suite struct ScenarioTests {
    func load(_ faults: String) throws -> (DeviceSpec, PCIDevice, Result<FaultScenario, SpecError>) {
        var text = readDefault()
        text.removeLast(2)  // "}\n"
        text += ",\n  \"faults\": \(faults)\n}\n"
        let path = "/tmp/vfu-scenario-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        close(fd)
        defer { unlink(path) }
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: path)
        let device = try registry.bind(spec).driver.build(spec)
        do { return (spec, device, .success(try FaultScenario.parse(spec, limits: ControlledDevice.limits(of: device)))) } catch {
            return (spec, device, .failure(error))
        }
    }

    func readDefault() -> String {
        let fd = open(repositoryRoot + "/specs/default.json", O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func failure(_ faults: String) throws -> SpecError? {
        if case .failure(let e) = try load(faults).2 { return e }
        return nil
    }

    @Test func badFaultsNameFileFieldAndReason() throws {
        let cases: [(String, String, String)] = [
            ("{}", "faults", "array"),
            ("[{\"kind\": \"explode\"}]", "faults[0].kind", "dma, delay, hang, disconnect, config"),
            ("[{\"kind\": \"delay\"}]", "faults[0].ms", "1...60000"),
            ("[{\"kind\": \"dma\", \"colour\": 1}]", "faults[0].colour", "unknown key"),
            ("[{\"kind\": \"dma\"}, {\"kind\": \"hang\", \"region\": \"bar0\", \"offset\": \"0x1000\"}]", "faults[1].offset", "outside bar0"),
            ("[{\"kind\": \"hang\", \"region\": \"bar1\"}]", "faults[0].region", "no region bar1"),
            ("[{\"kind\": \"config\", \"offset\": \"0xff\", \"data\": \"0102\"}]", "faults[0].data", "pass the end"),
            ("[{\"kind\": \"dma\", \"trigger\": {\"afterAccesses\": 1, \"afterMs\": 5}}]", "faults[0].trigger", "exactly one"),
            ("[{\"kind\": \"dma\", \"trigger\": {\"onWrite\": {\"region\": \"bar0\", \"offset\": 8}}}]", "faults[0].trigger.onWrite.value", "missing"),
            ("[{\"kind\": \"dma\", \"errno\": \"EWHAT\"}]", "faults[0].errno", "unknown errno"),
            ("[{\"kind\": \"dma\", \"ms\": 5}]", "faults[0].ms", "does not use"),
        ]
        for (faults, field, reason) in cases {
            let e = try #require(try failure(faults), "\(faults) should be refused")
            #expect(e.file.hasSuffix(".json"))
            #expect(e.field == field, "\(faults): \(e)")
            #expect(e.reason.contains(reason), "\(faults): \(e)")
        }
    }

    @Test func aScenarioArmsItsFaultsFromTheirTriggers() throws {
        let (_, device, result) = try load("""
            [{"kind": "dma", "count": 1, "errno": "EIO", "trigger": {"onWrite": {"region": "bar0", "offset": "0x08", "value": "0x5ca1ab1e"}}},
             {"kind": "config", "offset": "0x2c", "data": "adde", "survivesReset": true}]
            """)
        let scenario = try result.get()
        #expect(scenario.faults.count == 2)
        let c = ControlledDevice(name: "scenario", device: device)
        try c.arm(scenario)
        let list = c.statusForTests()
        #expect(list.map(\.state) == ["pending", "armed"])
        // The write that triggers it, as a guest would make it, arms the DMA fault.
        try device.writeConfig(0x04, [0x06, 0x00])
        let header = MessageHeader(messageID: 1, command: .regionWrite, messageSize: 36)
        let request = encodeMessage(header, payload: RegionAccess(offset: 8, region: 0, count: 4, data: [0x1e, 0xab, 0xa1, 0x5c]))
        var reply: [UInt8]? = []
        _ = c.commandDidFinish(header, request: request, reply: &reply, error: nil, session: 1, token: 0)
        #expect(c.statusForTests().map(\.state) == ["armed", "armed"])
        #expect(device.dmaWillStartForTests(c) == .EIO)
    }
}

extension ControlledDevice {
    func statusForTests() -> [FaultStatus] { faultList() }
}

extension PCIDevice {
    func writeConfig(_ offset: UInt64, _ bytes: [UInt8]) throws { try writeRegion(index: 7, offset: offset, data: bytes[...]) }
    func dmaWillStartForTests(_ c: ControlledDevice) -> VFIOErrno? { c.dmaWillStart(address: 0, count: 4, write: true) }
}

/// The watch stream's hand-written JSON says what JSONEncoder would.
@Suite struct EventEncodingTests {
    @Test func handWrittenLinesDecodeToTheSameEvent() throws {
        let now = Clock.monoNs()
        let samples = [
            RawEvent(kind: .access, timeNs: now, session: 3, write: true, command: 10, region: 0, offset: 8, size: 4,
                     bytes: [1, 2, 3, 4]),
            RawEvent(kind: .access, timeNs: now + 1, session: 1, command: 9, region: 2, offset: 0x10, size: 16,
                     bytes: Array(0..<16)),
            RawEvent(kind: .access, timeNs: now + 999, command: 9, region: 0, offset: 0, size: 4, errno: 5),
            RawEvent(kind: .dma, timeNs: now, write: true, offset: 0x1f00_0000, size: 256, errno: 5),
            RawEvent(kind: .irq, timeNs: now, region: 2, offset: 3),
            RawEvent(kind: .reset, timeNs: now, text: "deviceReset"),
            RawEvent(kind: .poll, timeNs: now, region: 0, offset: 0xc, size: 4, count: 65),
            RawEvent(kind: .fault, timeNs: now, text: "dma", count: 1, faultID: 7),
        ]
        for (i, raw) in samples.enumerated() {
            var r = raw
            r.seq = UInt64(i + 1)
            let line = r.jsonLine(device: "de\"v")
            #expect(line.last == UInt8(ascii: "\n"))
            let decoded = try JSONDecoder().decode(ControlEvent.self, from: Data(line.dropLast()))
            var expected = r.controlEvent(device: "de\"v")
            #expect(abs(decoded.time - expected.time) < 2e-6, "\(String(decoding: line, as: UTF8.self))")
            expected.time = decoded.time
            #expect(decoded == expected, "\(String(decoding: line, as: UTF8.self))")
        }
    }
}
