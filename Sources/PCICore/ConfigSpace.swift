import VFIOUserProtocol

/// A function's configuration space as the client sees it: 256 bytes, or 4 KiB
/// for PCI Express, with a per-bit write policy in the manner of vfio-pci-core.
///
/// Every byte has a write mask (bits software may change) and a write-1-to-clear
/// mask. Registers whose value is computed (BARs, Interrupt Status, MSI pending
/// bits, ...) or whose writes have side effects (FLR, MSI enable) are served by
/// dword hooks.
///
/// The core's own: its policy and raw stores are `@_spi(Server)`. A variant names
/// only ``Hook`` (for ``PCIDevice/interceptConfig(dword:value:writeMask:hook:)``) and
/// reaches config bits through ``PCIDevice/configDword(_:)`` and
/// ``PCIDevice/setConfigBits(dword:_:mask:)``. Behind the device lock: every caller holds it.
public final class ConfigSpace: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with the owning device's lock held.

    /// A computed or side-effecting dword. Both closures run with the device lock held.
    public struct Hook: Sendable {
        /// Returns the dword's current value; nil = use the stored bytes.
        public var read: (@Sendable (_ stored: UInt32) -> UInt32)?
        /// Called after the write policy has updated the stored bytes.
        /// `written` has a 0xFF byte lane for each byte the access touched.
        public var write: (@Sendable (_ old: UInt32, _ new: UInt32, _ written: UInt32) -> Void)?

        /// A hook with either or both closures (none: the dword is plain stored bytes).
        public init(read: (@Sendable (_ stored: UInt32) -> UInt32)? = nil,
                    write: (@Sendable (_ old: UInt32, _ new: UInt32, _ written: UInt32) -> Void)? = nil) {
            self.read = read
            self.write = write
        }
    }

    /// 256, or 4096 for PCI Express.
    @_spi(Server) public let size: Int
    // Read on every config access under the device lock (the caller holds it): unchecked,
    // they skip the runtime's dynamic exclusivity bookkeeping (issue #14).
    /// The stored bytes (what a client reads, before read hooks).
    @_spi(Server) @exclusivity(unchecked) public private(set) var bytes: [UInt8]
    /// Per byte, the bits a client write may change.
    @_spi(Server) public private(set) var writeMask: [UInt8]
    /// Per byte, the bits a client clears by writing 1.
    @_spi(Server) public private(set) var w1cMask: [UInt8]
    private var hooks: [Int: [Hook]] = [:]
    /// Whether each dword (offset / 4) has a read hook, so a client read looks up
    /// `hooks` only for the dwords that need it (the hot path reads plain bytes).
    @exclusivity(unchecked) private var readHooked: [Bool]
    private var powerOn: (bytes: [UInt8], writeMask: [UInt8], w1cMask: [UInt8])?

    /// An all-zero, read-only config space of `size` bytes (256 or 4096).
    @_spi(Server) public init(size: Int) {
        precondition(size == 256 || size == 4096, "config space is 256 or 4096 bytes")
        self.size = size
        bytes = [UInt8](repeating: 0, count: size)
        writeMask = bytes
        w1cMask = bytes
        readHooked = [Bool](repeating: false, count: size / 4)
    }

    // MARK: Building

    /// Sets a field's power-on value and write policy (bytes, little-endian).
    @_spi(Server) public func define(offset: Int, width: Int, value: UInt64, writable: UInt64 = 0, writeOneToClear: UInt64 = 0) {
        precondition(offset >= 0 && offset + width <= size)
        for i in 0..<width {
            let s = UInt64(8 * i)
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> s)
            writeMask[offset + i] = UInt8(truncatingIfNeeded: writable >> s)
            w1cMask[offset + i] = UInt8(truncatingIfNeeded: writeOneToClear >> s)
        }
    }

    /// Copies raw bytes in (capability bodies) with their masks.
    @_spi(Server) public func define(offset: Int, bytes src: [UInt8], writeMask wm: [UInt8]? = nil, w1cMask wc: [UInt8]? = nil) {
        precondition(offset >= 0 && offset + src.count <= size)
        for i in 0..<src.count {
            bytes[offset + i] = src[i]
            writeMask[offset + i] = wm.map { i < $0.count ? $0[i] : 0 } ?? 0
            w1cMask[offset + i] = wc.map { i < $0.count ? $0[i] : 0 } ?? 0
        }
    }

    /// Adds a hook on the dword at `offset` (rounded down to 4). Several hooks on one
    /// dword run in the order they were added; the last read hook wins.
    @_spi(Server) public func intercept(dword offset: Int, _ hook: Hook) {
        precondition(offset >= 0 && offset < size)
        hooks[offset & ~3, default: []].append(hook)
        if hook.read != nil { readHooked[offset >> 2] = true }
    }

    /// Records the current contents as the power-on state that `reset()` restores.
    @_spi(Server) public func sealPowerOnState() { powerOn = (bytes, writeMask, w1cMask) }

    /// Returns every register to its power-on value.
    @_spi(Server) public func reset() {
        guard let p = powerOn else { return }
        bytes = p.bytes
        writeMask = p.writeMask
        w1cMask = p.w1cMask
    }

    // MARK: Raw access for the device model (no policy, no hooks)

    /// The stored byte at `o`.
    @_spi(Server) public func load8(_ o: Int) -> UInt8 { bytes[o] }
    /// The stored little-endian u16 at `o`.
    @_spi(Server) public func load16(_ o: Int) -> UInt16 { bytes.le16(at: o) }
    /// The stored little-endian u32 at `o`.
    @_spi(Server) public func load32(_ o: Int) -> UInt32 { bytes.le32(at: o) }
    /// Stores a byte at `o`, past the write policy.
    @_spi(Server) public func store8(_ v: UInt8, _ o: Int) { bytes[o] = v }
    /// Stores a little-endian u16 at `o`, past the write policy.
    @_spi(Server) public func store16(_ v: UInt16, _ o: Int) { bytes.setLE16(v, at: o) }
    /// Stores a little-endian u32 at `o`, past the write policy.
    @_spi(Server) public func store32(_ v: UInt32, _ o: Int) { bytes.setLE32(v, at: o) }

    /// The dword as a client would read it (hooks applied).
    @_spi(Server) public func effectiveDword(_ offset: Int) -> UInt32 {
        let d = offset & ~3
        var v = bytes.le32(at: d)
        if let hs = hooks[d] { for h in hs { if let r = h.read { v = r(v) } } }
        return v
    }

    // MARK: Client access

    /// A client read: bounds-checked, hooks applied.
    @_spi(Server) public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        guard count >= 0, offset <= UInt64(size), UInt64(count) <= UInt64(size) - offset else { throw .EINVAL }
        return try [UInt8](unsafeUninitializedCapacity: count) { (buf, n) throws(VFIOErrno) in
            try read(offset: offset, into: UnsafeMutableRawBufferPointer(buf))
            n = count
        }
    }

    /// A client read into `buffer` (its whole length): bounds-checked, hooks applied,
    /// nothing allocated.
    @_spi(Server) public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        let count = buffer.count
        guard offset <= UInt64(size), UInt64(count) <= UInt64(size) - offset else { throw .EINVAL }
        guard count > 0 else { return }
        let o = Int(offset)
        bytes.withUnsafeBytes { src in buffer.baseAddress!.copyMemory(from: src.baseAddress! + o, byteCount: count) }
        var d = o & ~3
        while d < o + count {
            if readHooked[d >> 2] {
                let v = effectiveDword(d)
                for lane in 0..<4 where d + lane >= o && d + lane < o + count {
                    buffer[d + lane - o] = UInt8(truncatingIfNeeded: v >> UInt32(8 * lane))
                }
            }
            d += 4
        }
    }

    /// A client write: each byte changes only where its write mask allows; W1C bits
    /// clear where a 1 is written; then the touched dwords' hooks run.
    @_spi(Server) public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        let count = data.count
        guard offset <= UInt64(size), UInt64(count) <= UInt64(size) - offset else { throw .EINVAL }
        let o = Int(offset)
        var d = o & ~3
        while d < o + count {
            let old = bytes.le32(at: d)
            var lanes: UInt32 = 0
            for lane in 0..<4 {
                let i = d + lane
                guard i >= o && i < o + count else { continue }
                let v = data[data.startIndex + (i - o)]
                let wm = writeMask[i], c = w1cMask[i]
                var b = (bytes[i] & ~wm) | (v & wm)
                b &= ~(v & c)
                bytes[i] = b
                lanes |= 0xFF << UInt32(8 * lane)
            }
            if let hs = hooks[d] {
                let new = bytes.le32(at: d)
                for h in hs { h.write?(old, new, lanes) }
            }
            d += 4
        }
    }
}
