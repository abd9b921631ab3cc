import VFIOUserTransport

/// Guest-physical-like memory owned by the client: a memfd it can hand to the
/// server with DMA_MAP (so the server mmaps it), or keep to itself and serve the
/// server's DMA_READ / DMA_WRITE messages from.
public final class ClientMemory: Sendable {
    public let fd: OwnedFD
    public let mapping: MemoryMapping
    public var size: Int { mapping.length }

    public init(size: Int, name: String = "vfu-client-mem") throws(TransportError) {
        fd = try MemFD.create(name: name, size: size)
        mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, length: size, writable: true)
    }

    public func read(at offset: Int, count: Int) -> [UInt8] { mapping.read(at: UInt64(offset), count: count) ?? [] }
    public func write(at offset: Int, _ bytes: [UInt8]) { mapping.write(at: UInt64(offset), bytes) }
    public func fill(_ byte: UInt8) { mapping.base.initializeMemory(as: UInt8.self, repeating: byte, count: size) }
}
