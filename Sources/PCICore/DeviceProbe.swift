import VFIOUserProtocol

/// What a control plane (docs/control.md) attaches to a device to watch what it
/// does and to make it fail on purpose. Unattached (the default) it costs one nil
/// check per DMA and per delivered interrupt.
///
/// Called with the device lock held: an implementation must not take the device
/// lock itself from another thread while holding a lock it takes here.
public protocol DeviceProbe: AnyObject, Sendable {
    /// A device DMA passed the core's own checks and is about to touch client
    /// memory. Returning an errno fails it as a bus error would (nothing is read or
    /// written; the device model sees the errno).
    func dmaWillStart(address: UInt64, count: Int, write: Bool) -> VFIOErrno?
    /// An interrupt was signalled to the client's eventfd.
    func interruptSignalled(index: Int, vector: Int)
}

extension PCIDevice {
    /// Why the client could not receive interrupt `vector` of `index` now, or nil if
    /// it can: the device has no such vector, no eventfd is bound to it, or (MSI,
    /// MSI-X) the function's capability is not enabled in config space.
    @_spi(Server) public func interruptUnavailable(_ index: IRQIndex, vector: Int) -> String? {
        lock.withLock { () -> String? in
            let i = Int(index.rawValue)
            guard i < interrupts.indices.count, interrupts.indices[i].count > 0 else { return "the device has no \(index)" }
            guard vector >= 0, vector < interrupts.indices[i].count else {
                return "\(index) has \(interrupts.indices[i].count) vector(s); \(vector) is out of range"
            }
            if index == .msix, !msixConfigEnabled { return "the guest has not enabled MSI-X (MSI-X Enable is clear)" }
            if index == .msi, !msiConfigEnabled { return "the guest has not enabled MSI (MSI Enable is clear)" }
            if interrupts.indices[i].vectors[vector].eventFD == nil {
                return "the guest has not enabled \(index) vector \(vector) (no eventfd bound by SET_IRQS)"
            }
            return nil
        }
    }
}
