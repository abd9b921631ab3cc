import Glibc
import TestSupport
import Testing
import VFIOUserConformance
import VFIOUserProtocol
import VFIOUserTransport

/// A server with libvfio-user's defects, on purpose: it reads a body with one recv
/// (a short read is an error and the rest is left in the stream), answers an oversized
/// or reply-flagged request with an error without consuming its body, keeps the
/// command register across DEVICE_RESET, and has 4 KiB of config space without a PCI
/// Express capability. The suite must report each as a FAIL.
@Suite struct NaiveServerTests {
    @Test func theSuiteReportsEveryDefectOfANaiveServer() throws {
        let path = temporarySocketPath("naive")
        let listener = try UnixListener(path: path)
        spawnThread(name: "naive-server") {
            while let s = try? listener.accept() {
                spawnThread(name: "naive-conn") { NaiveServer().serve(s.fd.rawValue); s.shutdown() }
            }
        }
        defer { listener.close() }
        let report = ConformanceSuite(socketPath: path, timeoutMs: 1000, disruptive: true).run()
        let failed = Set(report.results.filter { $0.outcome == .fail }.map(\.id))
        for id in ["message.oversize-body", "message.reply-flag-body", "message.split-body-pipelined", "transfer.write-max",
                   "reset.command-register", "config.express-capability"] {
            #expect(failed.contains(id), "\(id) not reported:\n\(report.text)")
        }
        // What it gets right is not held against it.
        for id in ["config.read", "version.accepts-qemu", "message.pipelined-order"] {
            #expect(report.results.contains { $0.id == id && $0.outcome == .pass }, "\(id)")
        }
    }
}

final class NaiveServer {
    var config = [UInt8](repeating: 0, count: 4096)
    init() {
        config[0] = 0x4F; config[1] = 0x49; config[2] = 0xC8; config[3] = 0x0D   // vendor, device
    }

    func reply(_ fd: Int32, _ h: MessageHeader, _ payload: [UInt8] = [], error: VFIOErrno? = nil) {
        let header = error.map { MessageHeader.errorReply(to: h, errno: $0) } ?? .reply(to: h, payloadSize: payload.count)
        let bytes = header.bytes + (error == nil ? payload : [])
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func serve(_ fd: Int32) {
        var head = [UInt8](repeating: 0, count: 16)
        while true {
            // The header, whole (recv with MSG_WAITALL, as libvfio-user's get_msg).
            guard head.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, 16, Int32(MSG_WAITALL)) }) == 16 else { return }
            let h = MessageHeader(messageID: head.le16(at: 0), command: Command(head.le16(at: 2)), messageSize: head.le32(at: 4),
                                  flags: head.le32(at: 8), errorNumber: head.le32(at: 12))
            // Bad framing gets an error and the body is left where it is.
            if h.flags & 0xF != 0 || h.messageSize < 16 || h.messageSize > (1 << 20) + 32 { reply(fd, h, error: .EINVAL); continue }
            var body = [UInt8](repeating: 0, count: Int(h.messageSize) - 16)
            if !body.isEmpty {
                // One recv, no waiting for the rest: libvfio-user's tran_sock_recv_body.
                let n = body.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                if n != body.count { reply(fd, h, error: .EINVAL); continue }
            }
            handle(fd, h, body)
        }
    }

    func handle(_ fd: Int32, _ h: MessageHeader, _ body: [UInt8]) {
        switch h.command {
        case .version:
            let caps = VersionCapabilities(maxMsgFDs: 8, maxDataXferSize: 1 << 20, pgsizes: 4096, maxDMAMaps: 64, writeMultiple: false)
            reply(fd, h, VersionPayload(major: 0, minor: 0, capabilities: caps).encoded)
        case .deviceGetInfo:
            guard body.count >= 4, body.le32(at: 0) >= 16 else { reply(fd, h, error: .EINVAL); return }
            reply(fd, h, DeviceInfo(argsz: 16, flags: [.pci, .reset], numRegions: 9, numIRQs: 5).encoded)
        case .deviceGetRegionInfo:
            guard body.count >= 16, body.le32(at: 0) >= 32 else { reply(fd, h, error: .EINVAL); return }
            let index = body.le32(at: 8)
            guard index < 9 else { reply(fd, h, error: .EINVAL); return }
            reply(fd, h, RegionInfo(index: index, flags: index == 7 ? [.read, .write] : [], size: index == 7 ? 4096 : 0).encoded)
        case .regionRead, .regionWrite:
            guard body.count >= 16 else { reply(fd, h, error: .EINVAL); return }
            let offset = body.le64(at: 0), region = body.le32(at: 8), count = Int(body.le32(at: 12))
            guard region == 7, offset <= 4096, count <= 4096 - Int(offset) else { reply(fd, h, error: .EINVAL); return }
            if h.command == .regionRead {
                reply(fd, h, Array(body.prefix(16)) + config[Int(offset)..<Int(offset) + count])
            } else {
                guard body.count - 16 == count else { reply(fd, h, error: .EINVAL); return }
                if offset >= 4 { config.replaceSubrange(Int(offset)..<Int(offset) + count, with: body[16...]) }
                if h.flags & MessageHeader.noReplyFlag == 0 { reply(fd, h, Array(body.prefix(16))) }
            }
        case .deviceReset:
            reply(fd, h)   // the device's callback only: config space is left as it is
        default:
            reply(fd, h, error: .EINVAL)
        }
    }
}
