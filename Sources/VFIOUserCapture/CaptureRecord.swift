// One captured vfio-user message and the small pseudo-header that precedes it in a
// capture file. The layout is ours (LINKTYPE_USER0, see docs/debugging.md), chosen so
// that what libpcap cannot see on an AF_UNIX socket (which way the message went,
// which connection, the fds that rode with it) travels with every packet.

import VFIOUserProtocol

/// Which way a message travelled.
public enum CaptureDirection: UInt8, Sendable, Hashable, CustomStringConvertible {
    case clientToServer = 0
    case serverToClient = 1

    public var reversed: CaptureDirection { self == .clientToServer ? .serverToClient : .clientToServer }
    public var description: String { self == .clientToServer ? "c→s" : "s→c" }
}

/// What an fd that rode with a message was, so a replay can substitute a fresh one.
public struct CapturedFD: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable {
        case unknown = 0, memfd = 1, file = 2, eventfd = 3, socket = 4, other = 5
    }

    public var kind: Kind
    /// File size for memfds and regular files, 0 otherwise.
    public var size: UInt64

    public init(kind: Kind, size: UInt64 = 0) {
        self.kind = kind
        self.size = size
    }

    public var description: String {
        switch kind {
        case .memfd: "memfd(\(size))"
        case .file: "file(\(size))"
        case .eventfd: "eventfd"
        case .socket: "socket"
        case .other: "other"
        case .unknown: "unknown"
        }
    }
}

/// A message as a capture holds it.
///
/// Packet layout (little-endian, like the protocol):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version (1) |
/// | 1 | 1 | direction: 0 client→server, 1 server→client |
/// | 2 | 2 | header length: 12 + 16 × fd count; the vfio-user message starts here |
/// | 4 | 4 | connection number (1, 2, ... in the order connections were accepted) |
/// | 8 | 2 | fd count |
/// | 10 | 2 | flags: 0x1 raw bytes (the stream could not be framed), 0x2 truncated to the snap length, 0x4 incomplete (the stream ended mid-message) |
/// | 12 | 16 × n | per fd: kind u32 (0 unknown, 1 memfd, 2 regular file, 3 eventfd, 4 socket, 5 other), reserved u32, size u64 |
public struct CaptureRecord: Hashable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Bytes after the stream lost its framing: not one message.
        public static let raw = Flags(rawValue: 0x1)
        /// Only the first snap-length bytes of the message were kept.
        public static let truncated = Flags(rawValue: 0x2)
        /// The connection ended before the message was complete.
        public static let incomplete = Flags(rawValue: 0x4)
    }

    public static let version: UInt8 = 1
    public static let fixedHeaderSize = 12
    public static let fdEntrySize = 16

    /// Microseconds since the Unix epoch.
    public var timestampMicros: UInt64
    public var connection: UInt32
    public var direction: CaptureDirection
    public var flags: Flags
    public var fds: [CapturedFD]
    /// The captured message bytes (all of them unless `.truncated`).
    public var message: [UInt8]
    /// The message's full length on the wire.
    public var originalLength: Int

    public init(timestampMicros: UInt64, connection: UInt32, direction: CaptureDirection, flags: Flags = [],
                fds: [CapturedFD] = [], message: [UInt8], originalLength: Int? = nil) {
        self.timestampMicros = timestampMicros
        self.connection = connection
        self.direction = direction
        self.flags = flags
        self.fds = fds
        self.message = message
        self.originalLength = originalLength ?? message.count
    }

    public var headerLength: Int { Self.fixedHeaderSize + Self.fdEntrySize * fds.count }

    /// Pseudo-header followed by the message: one pcapng packet's data.
    public var packet: [UInt8] {
        var w = WireWriter(capacity: headerLength + message.count)
        w.u8(Self.version)
        w.u8(direction.rawValue)
        w.u16(UInt16(headerLength))
        w.u32(connection)
        w.u16(UInt16(fds.count))
        w.u16(flags.rawValue)
        for fd in fds {
            w.u32(fd.kind.rawValue)
            w.u32(0)
            w.u64(fd.size)
        }
        w.append(message)
        return w.bytes
    }

    /// The packet's length on the wire (pseudo-header plus the whole message).
    public var packetOriginalLength: Int { headerLength + originalLength }

    /// Decodes one packet's data (see the table above).
    public init(packet: [UInt8], timestampMicros: UInt64, originalLength: Int) throws(ProtocolError) {
        var r = WireReader(packet)
        let version = try r.u8()
        guard version == Self.version else { throw .invalid("capture record version \(version), expected \(Self.version)") }
        guard let dir = CaptureDirection(rawValue: try r.u8()) else { throw .invalid("capture record direction") }
        let headerLength = Int(try r.u16())
        let connection = try r.u32()
        let count = Int(try r.u16())
        let flags = Flags(rawValue: try r.u16())
        guard headerLength == Self.fixedHeaderSize + Self.fdEntrySize * count, headerLength <= packet.count else {
            throw .invalid("capture record header length \(headerLength) for \(count) fds")
        }
        var fds: [CapturedFD] = []
        for _ in 0..<count {
            let kind = CapturedFD.Kind(rawValue: try r.u32()) ?? .unknown
            try r.skip(4)
            fds.append(CapturedFD(kind: kind, size: try r.u64()))
        }
        self.init(timestampMicros: timestampMicros, connection: connection, direction: dir, flags: flags, fds: fds,
                  message: Array(packet[headerLength...]), originalLength: max(originalLength - headerLength, 0))
    }
}
