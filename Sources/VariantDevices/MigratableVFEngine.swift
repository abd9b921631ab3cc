import MigrationStream
import PCICore
import VFIOUserProtocol


/// The VF's descriptor engine, as device jobs (docs/architecture.md, "The device
/// execution model"): a RING_TAIL or CONTROL write, or a return to RUNNING, queues one
/// look at the ring (`kick`); a look processes up to `batch` descriptors, doing their
/// DMA from the job (the register write that kicked it has long been answered), and
/// queues the next look while descriptors remain. No thread of its own, no polling.
extension MigratableVF {
    /// Queues a look at the ring as a device job, unless one is queued already. The
    /// register write that kicked it has been answered by the time the job runs; the
    /// job does the descriptors' DMA and raises the completion interrupt. Called with
    /// the device lock held.
    func kick() {
        guard !lookQueued, !engineStopped else { return }
        lookQueued = true
        device.submitWork { [weak self] job in
            let again: Bool = job.withDevice { _ in
                guard let self else { return false }
                self.lookQueued = false
                return self.tick(job) && self.ringPending
            } ?? false
            // Descriptors left after a batch: look again, behind any other queued work.
            if again, let self { job.withDevice { _ in self.kick() } }
        }
    }

    /// Descriptors the guest posted that the engine has not taken yet.
    private var ringPending: Bool {
        let size = reg(.ringSize)
        return size > 0 && reg(.ringHead) != reg(.ringTail) && reg(.ringTail) &- reg(.ringHead) <= size
    }

    private var running: Bool { device.migration?.deviceMayRun ?? true }

    /// One look at the ring, under the device lock (message DMA releases it while the
    /// client answers; every step re-checks `epoch`); true while the engine is enabled
    /// and running.
    @discardableResult
    func tick(_ job: DeviceJob) -> Bool {
        guard running, reg(.control) & Self.controlEnable != 0, device.busMasterEnabled else { return false }
        set(.ticks, reg(.ticks) &+ 1)
        let size = reg(.ringSize)
        guard size > 0, size <= 4096, size.nonzeroBitCount == 1 else { return true }
        let e0 = epoch
        var done = 0
        while done < options.batch && reg(.ringHead) != reg(.ringTail) && reg(.ringTail) &- reg(.ringHead) <= size {
            guard processOne(size: size, epoch: e0, job: job) else { break }
            done += 1
        }
        if done > 0 && reg(.control) & Self.controlIRQ != 0 && running {
            if device.raiseInterrupt(vector: Int(reg(.irqVector))) != nil { set(.irqCount, reg(.irqCount) &+ 1) }
        }
        return true
    }

    /// Processes the descriptor at RING_HEAD. false: the device stopped meanwhile and
    /// the descriptor was abandoned untouched (it runs again after a resume).
    private func processOne(size: UInt32, epoch e0: UInt64, job: DeviceJob) -> Bool {
        func live() -> Bool { epoch == e0 && running && job.isCurrent }
        let head = reg(.ringHead)
        let base = (UInt64(reg(.ringHigh)) << 32 | UInt64(reg(.ringLow))) &+ UInt64(head % size) * UInt64(Self.descriptorSize)
        var status: UInt32 = 1
        var result: UInt64 = 0
        var length = 0
        do {
            let d = try job.dmaRead(address: base, count: Self.descriptorSize)
            guard live() else { return false }
            let op = d.le32(at: 0), len = Int(d.le32(at: 4)), src = d.le64(at: 8), dst = d.le64(at: 16)
            let cookie = d.le32(at: 24)
            length = len
            guard len <= Self.maxTransfer else { throw VFIOErrno.E2BIG }
            switch Op(rawValue: op) {
            case .hash:
                let data = try job.dmaRead(address: src, count: len)
                guard live() else { return false }
                result = XXH64.hash(data, seed: UInt64(cookie))
                var out = [UInt8](repeating: 0, count: 16)
                out.setLE64(UInt64(cookie), at: 0)
                out.setLE64(result, at: 8)
                try job.dmaWrite(address: dst, out)
            case .store:
                let data = try job.dmaRead(address: src, count: len)
                guard live() else { return false }
                guard dst <= UInt64(ram.size), UInt64(len) <= UInt64(ram.size) - dst else { throw VFIOErrno.EFAULT }
                try ram.write(offset: dst, data: data[...])
                result = XXH64.hash(data)
            case .load:
                guard src <= UInt64(ram.size), UInt64(len) <= UInt64(ram.size) - src else { throw VFIOErrno.EFAULT }
                let data = try ram.read(offset: src, count: len)
                try job.dmaWrite(address: dst, data)
                result = XXH64.hash(data)
            case nil:
                throw VFIOErrno.EINVAL
            }
        } catch {
            guard live() else { return false }
            status = 0x100 | ((error as? VFIOErrno)?.rawValue ?? VFIOErrno.EIO.rawValue)
        }
        guard live() else { return false }
        var st = [UInt8](repeating: 0, count: 4)
        st.setLE32(status, at: 0)
        if (try? job.dmaWrite(address: base &+ 28, st)) == nil {
            guard live() else { return false }
            status = status == 1 ? 0x100 | VFIOErrno.EFAULT.rawValue : status
        }
        guard live() else { return false }
        set(.ringHead, head &+ 1)
        if status == 1 {
            set(.completions, reg(.completions) &+ 1)
            let bytes = (UInt64(reg(.bytesHigh)) << 32 | UInt64(reg(.bytesLow))) &+ UInt64(length)
            set(.bytesLow, UInt32(truncatingIfNeeded: bytes)); set(.bytesHigh, UInt32(truncatingIfNeeded: bytes >> 32))
            var mix = [UInt8](repeating: 0, count: 16)
            mix.setLE32(reg(.digestLow), at: 0); mix.setLE32(reg(.digestHigh), at: 4); mix.setLE64(result, at: 8)
            let dg = XXH64.hash(mix)
            set(.digestLow, UInt32(truncatingIfNeeded: dg)); set(.digestHigh, UInt32(truncatingIfNeeded: dg >> 32))
        } else {
            set(.errors, reg(.errors) &+ 1)
        }
        return true
    }
}
