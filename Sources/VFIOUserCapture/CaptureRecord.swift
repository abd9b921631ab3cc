// One captured vfio-user message and the small pseudo-header that precedes it in a
// capture file. The layout is ours (LINKTYPE_USER0, see docs/debugging.md), chosen so
// that what libpcap cannot see on an AF_UNIX socket (which way the message went,
// which connection, the fds that rode with it) travels with every packet.

import VFIOUserProtocol

/// Which way a message travelled.
public enum CaptureDirection: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// From the client (the VMM) to the server (the device).
    case clientToServer = 0
    /// From the server to the client (DMA requests, replies to the client's commands).
    case serverToClient = 1

    /// The other direction.
    public var reversed: CaptureDirection { self == .clientToServer ? .serverToClient : .clientToServer }
    /// `c→s` or `s→c`.
    public var description: String { self == .clientToServer ? "c→s" : "s→c" }
}

/// What an fd that rode with a message was, so a replay can substitute a fresh one.
public struct CapturedFD: Hashable, Sendable, CustomStringConvertible {
    /// What the fd was when it was captured (from fstat and /proc).
    public enum Kind: UInt32, Sendable {
        /// Not determined (e.g. fstat failed).
        case unknown = 0
        /// A memfd: shared memory such as a DMA mapping.
        case memfd = 1
        /// A regular file.
        case file = 2
        /// An eventfd (interrupts, ioeventfds).
        case eventfd = 3
        /// A socket.
        case socket = 4
        /// Anything else (a pipe, a device node, ...).
        case other = 5
    }

    /// What the fd was.
    public var kind: Kind
    /// File size for memfds and regular files, 0 otherwise.
    public var size: UInt64

    /// A description of a captured fd.
    public init(kind: Kind, size: UInt64 = 0) {
        self.kind = kind
        self.size = size
    }

    /// The kind and, for memory and files, the size.
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
    /// Record flags (packet offset 10).
    public struct Flags: OptionSet, Hashable, Sendable {
        /// The flag bits as written.
        public var rawValue: UInt16
        /// Wraps raw flag bits.
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Bytes after the stream lost its framing: not one message.
        public static let raw = Flags(rawValue: 0x1)
        /// Only the first snap-length bytes of the message were kept.
        public static let truncated = Flags(rawValue: 0x2)
        /// The connection ended before the message was complete.
        public static let incomplete = Flags(rawValue: 0x4)
    }

    /// Layout version written at offset 0.
    public static let version: UInt8 = 1
    /// Bytes of the pseudo-header before the fd entries.
    public static let fixedHeaderSize = 12
    /// Bytes of one fd entry.
    public static let fdEntrySize = 16

    /// Microseconds since the Unix epoch.
    public var timestampMicros: UInt64
    /// The connection number (1, 2, ... in accept order).
    public var connection: UInt32
    /// Which way the message went.
    public var direction: CaptureDirection
    /// Whether the bytes are one whole, framed message.
    public var flags: Flags
    /// The fds that rode with the message.
    public var fds: [CapturedFD]
    /// The captured message bytes (all of them unless `.truncated`).
    public var message: [UInt8]
    /// The message's full length on the wire.
    public var originalLength: Int

    /// A record of `message`; `originalLength` defaults to the bytes given.
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

    /// Bytes of pseudo-header: 12 plus 16 per fd; the message starts here.
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
