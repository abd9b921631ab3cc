import VFIOUserTransport

/// Guest-physical-like memory owned by the client: a memfd it can hand to the
/// server with DMA_MAP (so the server mmaps it), or keep to itself and serve the
/// server's DMA_READ / DMA_WRITE messages from.
public final class ClientMemory: Sendable {
    /// The memfd backing the memory (pass it with DMA_MAP).
    public let fd: OwnedFD
    /// Our own mapping of the whole memfd.
    public let mapping: MemoryMapping
    /// Bytes of memory.
    public var size: Int { mapping.length }

    /// `size` bytes of zeroed shared memory; throws when memfd_create or mmap fails.
    public init(size: Int, name: String = "vfu-client-mem") throws(TransportError) {
        fd = try MemFD.create(name: name, size: size)
        mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, length: size, writable: true)
    }

    /// A copy of `count` bytes at `offset`; empty when the range is outside the memory.
    public func read(at offset: Int, count: Int) -> [UInt8] { mapping.read(at: UInt64(offset), count: count) ?? [] }
    /// Copies `bytes` to `offset`; does nothing when the range is outside the memory.
    public func write(at offset: Int, _ bytes: [UInt8]) { mapping.write(at: UInt64(offset), bytes) }
    /// Sets every byte to `byte`.
    public func fill(_ byte: UInt8) { mapping.base.initializeMemory(as: UInt8.self, repeating: byte, count: size) }
}
