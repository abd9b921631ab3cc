import VFIOUserProtocol

/// What the region-access hot path needs of one region, in a single immutable heap
/// object. Taking it out of the table costs one retain; copying a `Region` out of
/// it retained each of its arrays and its backing, three times per REGION_READ
/// (callgrind, issue #14). `PCIDevice` rebuilds the routes whenever its region table
/// changes; both are guarded by the device lock.
final class RegionRoute: Sendable {
    let size: UInt64
    let readable: Bool
    let writable: Bool
    let decodeGate: Region.DecodeGate
    /// Set for RAM (`.memory` backing): accesses go to the mapping.
    let memory: SharedMemory?
    /// Set otherwise: the handler, or the mux of a composite region.
    let handler: (any RegionAccessHandler)?

    init(_ r: Region) {
        size = r.size
        readable = r.readable
        writable = r.writable
        decodeGate = r.decodeGate
        switch r.backing {
        case .memory(let m): memory = m; handler = nil
        case .handler(let h): memory = nil; handler = h
        case .composite(let mux): memory = nil; handler = mux
        }
    }

    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        if let memory { return try memory.read(offset: offset, count: count) }
        return try handler!.read(offset: offset, count: count)
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        if let memory {
            guard memory.mapping.read(at: offset, into: buffer) else { throw .EINVAL }
            return
        }
        try handler!.read(offset: offset, into: buffer)
    }

    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        if let memory { return try memory.write(offset: offset, data: data) }
        try handler!.write(offset: offset, data: data)
    }
}
