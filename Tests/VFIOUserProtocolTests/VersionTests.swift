import Testing
@testable import VFIOUserProtocol

@Suite("VERSION negotiation payload")
struct VersionTests {
    /// major 0, minor 0, then `json` and a NUL.
    func payload(_ json: String, nul: Bool = true) -> [UInt8] {
        [0, 0, 0, 0] + Array(json.utf8) + (nul ? [0] : [])
    }

    @Test func payloadShorterThanFourBytesRejected() {
        for n in 0 ..< 4 { #expect(decodeThrows(VersionPayload.self, [UInt8](repeating: 0, count: n))) }
    }

    @Test func exactlyFourBytesHasNoCapabilities() throws {
        let v = try VersionPayload(payload: [0, 0, 2, 0])
        #expect(v.major == 0 && v.minor == 2 && v.capabilities == nil && v.rawJSON.isEmpty)
        #expect(v.effectiveCapabilities.effectiveMaxMsgFDs == 1)
        #expect(v.encoded == [0, 0, 2, 0])
    }

    @Test func missingNULRejected() {
        #expect(throws: ProtocolError.invalid("VERSION JSON not NUL-terminated")) {
            try VersionPayload(payload: payload(#"{"capabilities":{}}"#, nul: false))
        }
    }

    @Test(arguments: [
        "",  // just the NUL
        "[1,2]", "\"text\"", "42", "null", "true",  // not an object
        #"{"capabilities":"#, "{capabilities}", #"{"capabilities":{}}x"#,  // malformed
        #"{"capabilities":[]}"#, #"{"capabilities":5}"#,  // capabilities not an object
        #"{"capabilities":{"max_msg_fds":"8"}}"#, #"{"capabilities":{"max_msg_fds":8.5}}"#,
        #"{"capabilities":{"max_msg_fds":true}}"#, #"{"capabilities":{"max_data_xfer_size":"big"}}"#,
        #"{"capabilities":{"pgsizes":-4096}}"#, #"{"capabilities":{"max_dma_maps":[1]}}"#,
        #"{"capabilities":{"migration":5}}"#, #"{"capabilities":{"migration":{"pgsize":"4k"}}}"#,
        #"{"capabilities":{"twin_socket":{"supported":"yes"}}}"#, #"{"capabilities":{"twin_socket":true}}"#,
        #"{"capabilities":{"write_multiple":1}}"#, #"{"capabilities":{"x-swift-vfio-user":{"a":1}}}"#,
        #"{"capabilities":{"max_msg_fds":-1}}"#, #"{"capabilities":{"max_msg_fds":1025}}"#,
        #"{"capabilities":{"max_msg_fds":99999999999999999999}}"#,
        #"{"capabilities":{"max_data_xfer_size":-1}}"#,
    ])
    func malformedJSONRejected(json: String) {
        #expect(throws: ProtocolError.self, "\(json)") { try VersionPayload(payload: payload(json)) }
    }

    @Test func embeddedNULRejected() {
        #expect(decodeThrows(VersionPayload.self, [0, 0, 0, 0] + Array("{}".utf8) + [0] + Array("{}".utf8) + [0]))
    }

    @Test func maxMsgFDsBoundsAccepted() throws {
        #expect(try VersionPayload(payload: payload(#"{"capabilities":{"max_msg_fds":0}}"#)).capabilities?.maxMsgFDs == 0)
        #expect(try VersionPayload(payload: payload(#"{"capabilities":{"max_msg_fds":1024}}"#)).capabilities?.maxMsgFDs == 1024)
    }

    @Test func emptyObjectAndUnknownKeys() throws {
        let empty = try VersionPayload(payload: payload("{}"))
        #expect(empty.capabilities == nil && empty.rawJSON == Array("{}".utf8))
        #expect(empty.encoded == payload("{}"))
        let v = try VersionPayload(payload: payload(#"{"other":[1,{"x":null}],"capabilities":{"spurious":{"a":[]},"max_msg_fds":4}}"#))
        #expect(v.capabilities == VersionCapabilities(maxMsgFDs: 4))
    }

    /// The JSON QEMU 10.1 sends (reference §2.3): spaces, hash key order.
    @Test func qemuRequestParses() throws {
        let json = #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#
        #expect(json.utf8.count == 193)
        let message = encodeMessage(MessageHeader(messageID: 0, command: .version, messageSize: 0), payload: payload(json))
        #expect(message.count == 214)
        let v = try VersionPayload(message: message)
        #expect(v.capabilities == VersionCapabilities(
            maxMsgFDs: 16, maxDataXferSize: 1_048_576, pgsizes: 4096, maxDMAMaps: 65535,
            migration: MigrationCapability(pgsize: 4096, maxBitmapSize: 268_435_456), writeMultiple: true))
        #expect(v.capabilities?.effectiveWriteMultiple == true)
        #expect(v.rawJSON == Array(json.utf8))
    }

    @Test func encodesAllKeysInFixedOrder() {
        let caps = VersionCapabilities(
            maxMsgFDs: 8, maxDataXferSize: 4096, pgsizes: 0x1000, maxDMAMaps: 10,
            migration: MigrationCapability(pgsize: 4096, maxBitmapSize: 1), twinSocket: TwinSocket(supported: true, fdIndex: 0),
            writeMultiple: false, extensions: ["device-info-caps": "1", "b\"q": "x\\y\n"])
        #expect(caps.json == #"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":4096,"pgsizes":4096,"max_dma_maps":10,"migration":{"pgsize":4096,"max_bitmap_size":1},"twin_socket":{"supported":true,"fd_index":0},"write_multiple":false,"x-swift-vfio-user":{"b\"q":"x\\y\n","device-info-caps":"1"}}}"#)
        #expect(VersionCapabilities().json == #"{"capabilities":{}}"#)
    }

    @Test func extensionRoundTrip() throws {
        let caps = VersionCapabilities(maxMsgFDs: 8, extensions: ["device-info-caps": "1"])
        let decoded = try VersionPayload(payload: VersionPayload(capabilities: caps).encoded)
        #expect(decoded.capabilities == caps)
        #expect(decoded.capabilities?.hasExtension("device-info-caps") == true)
        #expect(decoded.capabilities?.hasExtension("other") == false)
        #expect(String(decoding: decoded.rawJSON, as: UTF8.self) == #"{"capabilities":{"max_msg_fds":8,"x-swift-vfio-user":{"device-info-caps":"1"}}}"#)
    }

    @Test func defaults() {
        let c = VersionCapabilities()
        #expect(c.effectiveMaxMsgFDs == 1)
        #expect(c.effectiveMaxDataXferSize == 1_048_576)
        #expect(c.effectivePgsizes == 4096)
        #expect(c.effectiveMaxDMAMaps == 65535)
        #expect(c.effectiveWriteMultiple == false && c.effectiveTwinSocketSupported == false)
        let set = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 65536, pgsizes: 0x201000, maxDMAMaps: 3)
        #expect(set.effectiveMaxMsgFDs == 16 && set.effectiveMaxDataXferSize == 65536)
        #expect(set.effectivePgsizes == 0x201000 && set.effectiveMaxDMAMaps == 3)
    }

    @Test func twinSocketDefaultsToUnsupported() throws {
        let v = try VersionPayload(payload: payload(#"{"capabilities":{"twin_socket":{}}}"#))
        #expect(v.capabilities?.twinSocket == TwinSocket(supported: false, fdIndex: nil))
    }

    @Test func rawJSONPassThroughWhenNoCapabilities() {
        let v = VersionPayload(major: 0, minor: 1, capabilities: nil, rawJSON: Array(#"{"x":1}"#.utf8))
        #expect(v.encoded == [0, 0, 1, 0] + Array(#"{"x":1}"#.utf8) + [0])
        #expect(VersionPayload(capabilities: nil).encoded == payload("{}"))
    }
}
