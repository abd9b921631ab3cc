import Glibc

/// A shared mapping of (part of) a file descriptor: DMA memory a client mapped
/// to us, or device RAM we give to clients.
///
/// Every access is bounds-checked against the mapping, so nothing a client asks
/// for can reach memory outside what it mapped. The memory is shared with other
/// processes by design, hence `@unchecked Sendable`: races on its contents are the
/// same races real hardware has with its driver.
public final class MemoryMapping: @unchecked Sendable {
    // @unchecked: only `let`s, but `base` is a raw pointer into memory shared with other processes.
    /// Start of the mapping in our address space.
    public let base: UnsafeMutableRawPointer
    /// Bytes mapped.
    public let length: Int
    /// Whether the mapping is writable (writes to a read-only one fail).
    public let writable: Bool

    /// Maps `length` bytes of `fd` from `offset` (MAP_SHARED); throws `.refused` for a zero length or an offset past Int64, `.system` when mmap fails.
    public init(fd: Int32, offset: UInt64, length: Int, writable: Bool) throws(TransportError) {
        guard length > 0 else { throw .refused("mapping of zero length") }
        let prot = PROT_READ | (writable ? PROT_WRITE : 0)
        guard offset <= UInt64(Int64.max) else { throw .refused("offset out of range") }
        let p = mmap(nil, length, prot, MAP_SHARED, fd, off_t(offset))
        guard let p, p != MAP_FAILED else { throw .system("mmap", errno) }
        base = p
        self.length = length
        self.writable = writable
    }

    deinit { munmap(base, length) }

    /// True when [offset, offset+count) lies inside the mapping (overflow-safe).
    @inlinable public func contains(offset: UInt64, count: Int) -> Bool {
        count >= 0 && offset <= UInt64(length) && UInt64(count) <= UInt64(length) - offset
    }

    /// A copy of `count` bytes at `offset`, or nil when the range leaves the mapping.
    public func read(at offset: UInt64, count: Int) -> [UInt8]? {
        guard contains(offset: offset, count: count) else { return nil }
        return [UInt8](unsafeUninitializedCapacity: count) { buf, n in
            if count > 0 { memcpy(buf.baseAddress!, base + Int(offset), count) }
            n = count
        }
    }

    /// Copies `dst.count` bytes at `offset` into `dst`; false (nothing copied) when the range leaves the mapping.
    public func read(at offset: UInt64, into dst: UnsafeMutableRawBufferPointer) -> Bool {
        guard contains(offset: offset, count: dst.count) else { return false }
        if dst.count > 0 { memcpy(dst.baseAddress!, base + Int(offset), dst.count) }
        return true
    }

    /// Copies `bytes` to `offset`; false (nothing written) when read-only or the range leaves the mapping.
    @discardableResult
    public func write<C: Collection>(at offset: UInt64, _ bytes: C) -> Bool where C.Element == UInt8 {
        guard writable, contains(offset: offset, count: bytes.count) else { return false }
        let dst = UnsafeMutableRawBufferPointer(start: base + Int(offset), count: bytes.count)
        dst.copyBytes(from: bytes)
        return true
    }

    /// Copies `src` to `offset`; false (nothing written) when read-only or the range leaves the mapping.
    @discardableResult
    public func write(at offset: UInt64, from src: UnsafeRawBufferPointer) -> Bool {
        guard writable, contains(offset: offset, count: src.count) else { return false }
        if src.count > 0 { memcpy(base + Int(offset), src.baseAddress!, src.count) }
        return true
    }
}
