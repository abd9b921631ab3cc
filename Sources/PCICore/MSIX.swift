import VFIOUserProtocol

/// The MSI-X table and PBA inside a BAR (PCI 3.0 §6.8.2).
///
/// Each 16-byte entry holds the message address, data and vector control (bit 0
/// masks the vector). Vectors are masked at reset, as PCI requires. The PBA is
/// read-only and mirrors the interrupt controller's pending bits.
/// Guarded by the device lock.
@_spi(Server) public final class MSIXTable: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with the owning device's lock held.
    /// Number of table entries.
    public let vectors: Int
    private(set) var entries: [UInt8]
    private(set) var pba: [UInt8]
    var onMaskChange: @Sendable () -> Void = {}

    init(vectors: Int) {
        self.vectors = vectors
        entries = [UInt8](repeating: 0, count: vectors * 16)
        pba = [UInt8](repeating: 0, count: ((vectors + 63) / 64) * 8)
        reset()
    }

    /// Table bytes (16 per vector).
    public var tableSize: Int { entries.count }
    /// PBA bytes (a u64 per 64 vectors).
    public var pbaSize: Int { pba.count }

    /// Whether entry `v`'s Vector Control mask bit is set.
    public func isVectorMasked(_ v: Int) -> Bool { entries[v * 16 + 12] & 1 != 0 }

    /// Entry `v`: message address, data and mask bit.
    public func entry(_ v: Int) -> (address: UInt64, data: UInt32, masked: Bool) {
        (entries.le64(at: v * 16), entries.le32(at: v * 16 + 8), isVectorMasked(v))
    }

    func setPending(_ v: Int, _ p: Bool) {
        if p { pba[v / 8] |= 1 << UInt8(v % 8) } else { pba[v / 8] &= ~(1 << UInt8(v % 8)) }
    }

    func reset() {
        for i in entries.indices { entries[i] = 0 }
        for v in 0..<vectors { entries[v * 16 + 12] = 1 }
        for i in pba.indices { pba[i] = 0 }
    }

    /// Region handler for the table range.
    var tableHandler: any RegionAccessHandler {
        ClosureRegionHandler(
            read: { [unowned self] o, n throws(VFIOErrno) in Array(self.entries[Int(o)..<(Int(o) + n)]) },
            write: { [unowned self] o, data throws(VFIOErrno) in
                for (i, b) in data.enumerated() {
                    let at = Int(o) + i
                    // Vector control: only the mask bit is defined.
                    self.entries[at] = (at % 16 == 12) ? (b & 1) : (at % 16 > 12 ? 0 : b)
                }
                self.onMaskChange()
            })
    }

    /// Region handler for the PBA range (read-only; writes are ignored as PCI says).
    var pbaHandler: any RegionAccessHandler {
        ClosureRegionHandler(
            read: { [unowned self] o, n throws(VFIOErrno) in Array(self.pba[Int(o)..<(Int(o) + n)]) },
            write: { _, _ throws(VFIOErrno) in })
    }
}
