// pcapng (draft-ietf-opsawg-pcapng) encoding and decoding, pure bytes in and out.
// We write one section, one interface (LINKTYPE_USER0, microsecond timestamps) and one
// Enhanced Packet Block per vfio-user message; the reader accepts any little-endian
// file with Enhanced or Simple Packet Blocks, so captures edited by Wireshark
// (editcap, "Export Specified Packets") still replay.

import VFIOUserProtocol

/// pcapng files of vfio-user messages: one packet per message, with the `CaptureRecord` pseudo-header.
public enum Pcapng {
    /// LINKTYPE_USER0: a private link type; contrib/wireshark/vfio-user.lua claims it.
    public static let linkTypeUser0: UInt16 = 147
    /// The largest packet Wireshark reads for a link type like ours
    /// (WTAP_MAX_PACKET_SIZE_STANDARD, 256 KiB); longer messages are truncated to it
    /// in the capture (their original length is kept).
    public static let maxSnapLength = 262_144
    /// Default snap length, in bytes of packet (pseudo-header included).
    public static let defaultSnapLength = maxSnapLength

    static let sectionHeaderType: UInt32 = 0x0A0D_0D0A
    static let interfaceDescriptionType: UInt32 = 1
    static let simplePacketType: UInt32 = 3
    static let enhancedPacketType: UInt32 = 6
    static let byteOrderMagic: UInt32 = 0x1A2B_3C4D

    /// Section header and interface description: the start of every capture file.
    public static func fileHeader(snapLength: Int = defaultSnapLength, application: String = "vfu") -> [UInt8] {
        var shbBody = WireWriter()
        shbBody.u32(byteOrderMagic)
        shbBody.u16(1)
        shbBody.u16(0)
        shbBody.u64(UInt64.max)  // section length unknown: we append as we go
        option(&shbBody, code: 4, Array(application.utf8))  // shb_userappl
        endOfOptions(&shbBody)

        var idbBody = WireWriter()
        idbBody.u16(linkTypeUser0)
        idbBody.u16(0)
        idbBody.u32(UInt32(clamping: snapLength))
        option(&idbBody, code: 2, Array("vfio-user".utf8))  // if_name
        option(&idbBody, code: 9, [6])                      // if_tsresol: 10^-6 s
        endOfOptions(&idbBody)
        return block(sectionHeaderType, shbBody.bytes) + block(interfaceDescriptionType, idbBody.bytes)
    }

    /// One Enhanced Packet Block for a record. `epb_flags` says inbound for
    /// client→server and outbound for server→client (as the server sees it).
    public static func packetBlock(_ record: CaptureRecord) -> [UInt8] {
        let data = record.packet
        var w = WireWriter(capacity: data.count + 48)
        w.u32(0)  // interface 0
        w.u32(UInt32(truncatingIfNeeded: record.timestampMicros >> 32))
        w.u32(UInt32(truncatingIfNeeded: record.timestampMicros))
        w.u32(UInt32(data.count))
        w.u32(UInt32(clamping: record.packetOriginalLength))
        w.append(data)
        w.zeros(padding(data.count))
        var flags = WireWriter(capacity: 4)
        flags.u32(record.direction == .clientToServer ? 0x1 : 0x2)
        option(&w, code: 2, flags.bytes)  // epb_flags
        endOfOptions(&w)
        return block(enhancedPacketType, w.bytes)
    }

    /// A packet as read back from a file.
    public struct Packet: Sendable, Hashable {
        /// The interface's link type (`linkTypeUser0` for our captures).
        public var linkType: UInt16
        /// Microseconds since the Unix epoch.
        public var timestampMicros: UInt64
        /// The captured bytes.
        public var data: [UInt8]
        /// The packet's length on the wire (more than `data.count` when it was truncated).
        public var originalLength: Int
    }

    /// Every packet of a pcapng file, in file order.
    public static func packets(in bytes: [UInt8]) throws(ProtocolError) -> [Packet] {
        var out: [Packet] = []
        var interfaces: [(linkType: UInt16, unitsPerSecond: UInt64)] = []
        var at = 0
        while at < bytes.count {
            guard bytes.count - at >= 12 else { throw .truncated(needed: 12, available: bytes.count - at) }
            let type = bytes.le32(at: at)
            let length = Int(bytes.le32(at: at + 4))
            if type == sectionHeaderType {
                guard bytes.count - at >= 12, bytes.le32(at: at + 8) == byteOrderMagic else {
                    throw .invalid("not a little-endian pcapng section")
                }
                interfaces.removeAll()
            }
            guard length >= 12, length % 4 == 0, length <= bytes.count - at else {
                throw .invalid("pcapng block at \(at) has length \(length)")
            }
            let body = Array(bytes[(at + 8) ..< (at + length - 4)])
            switch type {
            case interfaceDescriptionType:
                guard body.count >= 8 else { throw .truncated(needed: 8, available: body.count) }
                interfaces.append((body.le16(at: 0), unitsPerSecond(options: Array(body[8...]))))
            case enhancedPacketType:
                guard body.count >= 20 else { throw .truncated(needed: 20, available: body.count) }
                let interface = Int(body.le32(at: 0))
                guard interface < interfaces.count else { throw .invalid("packet on undeclared interface \(interface)") }
                let raw = UInt64(body.le32(at: 4)) << 32 | UInt64(body.le32(at: 8))
                let captured = Int(body.le32(at: 12))
                guard captured <= body.count - 20 else { throw .truncated(needed: captured, available: body.count - 20) }
                let (linkType, units) = interfaces[interface]
                out.append(Packet(linkType: linkType, timestampMicros: micros(raw, unitsPerSecond: units),
                                  data: Array(body[20 ..< 20 + captured]), originalLength: Int(body.le32(at: 16))))
            case simplePacketType:
                guard let first = interfaces.first, body.count >= 4 else { throw .invalid("simple packet without interface") }
                let original = Int(body.le32(at: 0))
                out.append(Packet(linkType: first.linkType, timestampMicros: 0,
                                  data: Array(body[4 ..< 4 + min(original, body.count - 4)]), originalLength: original))
            default:
                break
            }
            at += length
        }
        return out
    }

    /// The vfio-user records of a capture we (or anyone using our pseudo-header) wrote.
    public static func records(in bytes: [UInt8]) throws(ProtocolError) -> [CaptureRecord] {
        var out: [CaptureRecord] = []
        for p in try packets(in: bytes) where p.linkType == linkTypeUser0 {
            out.append(try CaptureRecord(packet: p.data, timestampMicros: p.timestampMicros, originalLength: p.originalLength))
        }
        return out
    }

    // MARK: Block pieces

    private static func block(_ type: UInt32, _ body: [UInt8]) -> [UInt8] {
        let total = UInt32(12 + body.count)
        var w = WireWriter(capacity: Int(total))
        w.u32(type)
        w.u32(total)
        w.append(body)
        w.u32(total)
        return w.bytes
    }

    private static func padding(_ n: Int) -> Int { (4 - n % 4) % 4 }

    private static func option(_ w: inout WireWriter, code: UInt16, _ value: [UInt8]) {
        w.u16(code)
        w.u16(UInt16(value.count))
        w.append(value)
        w.zeros(padding(value.count))
    }

    private static func endOfOptions(_ w: inout WireWriter) { w.u32(0) }

    /// if_tsresol (option 9): 10^-n or 2^-n seconds; default microseconds.
    private static func unitsPerSecond(options: [UInt8]) -> UInt64 {
        var at = 0
        while options.count - at >= 4 {
            let code = options.le16(at: at), len = Int(options.le16(at: at + 2))
            if code == 0 || options.count - at - 4 < len { break }
            if code == 9, len >= 1 {
                let v = options[at + 4]
                let exp = UInt64(v & 0x7f)
                if v & 0x80 != 0 { return exp < 64 ? 1 << exp : 1 }
                var u: UInt64 = 1
                for _ in 0..<min(exp, 19) { u *= 10 }
                return u
            }
            at += 4 + len + padding(len)
        }
        return 1_000_000
    }

    private static func micros(_ raw: UInt64, unitsPerSecond: UInt64) -> UInt64 {
        if unitsPerSecond == 1_000_000 { return raw }
        if unitsPerSecond > 1_000_000 { return raw / (unitsPerSecond / 1_000_000) }
        return raw * (1_000_000 / unitsPerSecond)
    }
}
