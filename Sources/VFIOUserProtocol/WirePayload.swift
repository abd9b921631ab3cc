/// A message payload: the bytes that follow the 16-byte ``MessageHeader``.
///
/// Every request and reply body in the protocol conforms, so that the server,
/// the client and the tests encode and decode them the same way. Decoders never
/// trap: short or malformed input becomes a ``ProtocolError``, which the server
/// turns into an EINVAL reply.
public protocol WirePayload: Sendable {
    /// Decodes from the payload (the bytes after the 16-byte header).
    ///
    /// The reader's readable range must be exactly the payload: layouts with a
    /// variable tail (region write data, capability chains) take everything
    /// up to the reader's end.
    init(from reader: inout WireReader) throws(ProtocolError)

    /// Appends the payload to `writer`. Offsets inside the payload (capability
    /// chains) are computed relative to where this call starts writing.
    func encode(into writer: inout WireWriter)
}

extension WirePayload {
    /// The payload bytes alone, without a header.
    public var encoded: [UInt8] {
        var w = WireWriter()
        encode(into: &w)
        return w.bytes
    }

    /// Decodes a bare payload (no header).
    public init(payload: [UInt8]) throws(ProtocolError) {
        var r = WireReader(payload)
        try self.init(from: &r)
    }

    /// Decodes the payload of a whole message (header included), bounded by the
    /// header's `msg_size`, which must not exceed the bytes available.
    public init(message: [UInt8]) throws(ProtocolError) {
        let header = try MessageHeader.decode(message)
        guard header.messageSize >= UInt32(MessageHeader.size) else {
            throw .invalid("msg_size \(header.messageSize) < 16")
        }
        guard Int(header.messageSize) <= message.count else {
            throw .truncated(needed: Int(header.messageSize), available: message.count)
        }
        var r = WireReader(message, from: MessageHeader.size, to: Int(header.messageSize))
        try self.init(from: &r)
    }
}

/// A payload with no bytes (DEVICE_RESET, DMA_MAP reply, MIG_DATA_WRITE reply, ...).
/// Extra bytes are ignored.
public struct EmptyPayload: WirePayload, Hashable {
    /// The empty payload.
    public init() {}
    /// Accepts any payload, ignoring its bytes.
    public init(from reader: inout WireReader) throws(ProtocolError) {}
    /// Writes nothing.
    public func encode(into writer: inout WireWriter) {}
}

/// Encodes a whole message: `header` with `messageSize` set to 16 + payload size,
/// followed by the payload.
public func encodeMessage(_ header: MessageHeader, payload: some WirePayload) -> [UInt8] {
    var body = WireWriter()
    payload.encode(into: &body)
    return encodeMessage(header, payload: body.bytes)
}

/// Encodes a whole message from a raw payload, fixing up `messageSize`.
public func encodeMessage(_ header: MessageHeader, payload: [UInt8]) -> [UInt8] {
    var h = header
    h.messageSize = UInt32(MessageHeader.size + payload.count)
    var w = WireWriter(capacity: MessageHeader.size + payload.count)
    h.encode(into: &w)
    w.append(payload)
    return w.bytes
}
