/// DEVICE_GET_REGION_IO_FDS request payload (16 bytes, reference §3.5).
/// QEMU 10.1 never sends this command.
public struct RegionIOFDsRequest: WirePayload, Hashable {
    /// Encoded size in bytes.
    public static let size = 16

    /// Largest reply payload the client can take.
    public var argsz: UInt32
    /// Must be 0.
    public var flags: UInt32
    /// The region index (`RegionIndex`).
    public var index: UInt32
    /// Must be 0.
    public var count: UInt32

    /// A request for region `index`.
    public init(argsz: UInt32, flags: UInt32 = 0, index: UInt32, count: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.count = count
    }

    /// Decodes the 16 bytes.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = try r.u32(); index = try r.u32(); count = try r.u32()
    }

    /// Writes the 16 bytes.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags); w.u32(index); w.u32(count)
    }
}

/// One ioeventfd/ioregionfd entry in the SPEC's 40-byte layout.
///
/// libvfio-user uses a different 48-byte entry (reference §3.5); we follow the
/// SPEC, whose stride clients derive as `(argsz - 16) / count`.
public struct IOFDEntry: Hashable, Sendable {
    /// Encoded size of one entry.
    public static let size = 40
    /// `type` values.
    public static let typeIOEventFD: UInt32 = 0
    /// `type`: an ioregionfd (accesses are forwarded as messages on the fd).
    public static let typeIORegionFD: UInt32 = 1
    /// KVM ioeventfd `flags`.
    public static let flagDatamatch: UInt32 = 0x1
    /// KVM ioeventfd `flags`: a port I/O access.
    public static let flagPIO: UInt32 = 0x2
    /// KVM ioeventfd `flags`: a virtio-ccw notification.
    public static let flagVirtioCCWNotify: UInt32 = 0x8

    /// Offset within the region.
    public var offset: UInt64
    /// Access width, 0 = any.
    public var size: UInt64
    /// Index into the fds sent with the reply.
    public var fdIndex: UInt32
    /// `typeIOEventFD` or `typeIORegionFD`.
    public var type: UInt32
    /// KVM ioeventfd flags (`flagDatamatch`, ...).
    public var flags: UInt32
    /// `datamatch` for ioeventfds, `user_data` for ioregionfds.
    public var datamatch: UInt64

    /// An entry for fd number `fdIndex` of the reply.
    public init(offset: UInt64, size: UInt64, fdIndex: UInt32, type: UInt32 = IOFDEntry.typeIOEventFD,
                flags: UInt32 = 0, datamatch: UInt64 = 0) {
        self.offset = offset
        self.size = size
        self.fdIndex = fdIndex
        self.type = type
        self.flags = flags
        self.datamatch = datamatch
    }
}

/// DEVICE_GET_REGION_IO_FDS reply: 16-byte header plus `count` 40-byte entries.
///
/// When the client's `argsz` was too small the reply is the header alone (with
/// the needed `argsz` and `count`); that decodes as `entries == []`.
public struct RegionIOFDsReply: WirePayload, Hashable {
    /// Size needed for all entries.
    public var argsz: UInt32
    /// Must be 0.
    public var flags: UInt32
    /// The region index (`RegionIndex`).
    public var index: UInt32
    /// Entries the region has (possibly more than `entries` holds).
    public var count: UInt32
    /// The entries that fitted in the client's `argsz`.
    public var entries: [IOFDEntry]

    /// A reply with the given fields.
    public init(argsz: UInt32, flags: UInt32 = 0, index: UInt32, count: UInt32, entries: [IOFDEntry]) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.count = count
        self.entries = entries
    }

    /// A complete reply for `entries`.
    public init(index: UInt32, entries: [IOFDEntry]) {
        self.init(argsz: UInt32(16 + IOFDEntry.size * entries.count), index: index,
                  count: UInt32(entries.count), entries: entries)
    }

    /// Decodes the header and `count` entries, or none for a header-only reply; throws `.truncated` when entries are short.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = try r.u32(); index = try r.u32(); count = try r.u32()
        entries = []
        if r.remaining == 0 { return }
        let n = Int(count)
        guard n <= r.remaining / IOFDEntry.size else {
            throw .truncated(needed: n * IOFDEntry.size, available: r.remaining)
        }
        entries.reserveCapacity(n)
        for _ in 0..<n {
            let offset = try r.u64(), size = try r.u64(), fdIndex = try r.u32(), type = try r.u32()
            let flags = try r.u32()
            try r.skip(4)
            entries.append(IOFDEntry(offset: offset, size: size, fdIndex: fdIndex, type: type, flags: flags,
                                     datamatch: try r.u64()))
        }
    }

    /// Writes the header and the entries.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags); w.u32(index); w.u32(count)
        for e in entries {
            w.u64(e.offset); w.u64(e.size); w.u32(e.fdIndex); w.u32(e.type); w.u32(e.flags); w.u32(0)
            w.u64(e.datamatch)
        }
    }
}
