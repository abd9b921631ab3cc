import PCICore
import VFIOUserProtocol

/// The built-in doorbell model: a tiny DMA engine that lets tests (and a guest)
/// observe regions, DMA and interrupts end to end.
///
/// Registers (32-bit, offsets from the model's base; docs/spec-format.md):
/// 0x00 MAGIC, 0x04 VERSION, 0x08 SCRATCH, 0x0C COMPLETIONS, 0x10/0x14 DMA address,
/// 0x18 DMA_LEN, 0x1C PATTERN, 0x20 DOORBELL (1 fill, 2 checksum, 3 interrupt),
/// 0x24 IRQ_VECTOR, 0x28 RESULT, 0x2C ERROR, 0x30 IRQ_COUNT, 0x34 IRQ_ACK.
public final class DoorbellDevice: RegionAccessHandler, Sendable {
    /// Bytes of register space the model claims.
    public static let size: UInt64 = 0x40
    /// MAGIC: "VFUD".
    public static let magic: UInt32 = 0x4455_4656
    /// VERSION: 1.0.
    public static let version: UInt32 = 0x0001_0000
    /// Longest FILL or CHECKSUM transfer (E2BIG above).
    public static let maxTransfer: UInt32 = 1 << 20

    /// Register offsets from the model's base.
    public enum Register: UInt64 {
        /// MAGIC (RO).
        case magic = 0x00
        /// VERSION (RO).
        case version = 0x04
        /// SCRATCH: any value, read back.
        case scratch = 0x08
        /// COMPLETIONS: commands finished (RO).
        case completions = 0x0C
        /// DMA address, low dword.
        case dmaAddressLow = 0x10
        /// DMA address, high dword.
        case dmaAddressHigh = 0x14
        /// DMA_LEN: bytes to fill or checksum.
        case dmaLength = 0x18
        /// PATTERN: FILL's first dword.
        case pattern = 0x1C
        /// DOORBELL: writing a command starts it (reads 0).
        case doorbell = 0x20
        /// IRQ_VECTOR: the vector raised on completion.
        case irqVector = 0x24
        /// RESULT: CHECKSUM's FNV-1a (RO).
        case result = 0x28
        /// ERROR: the last command's errno, 0 on success (RO).
        case error = 0x2C
        /// IRQ_COUNT: completion interrupts raised (RO).
        case irqCount = 0x30
        /// IRQ_ACK: writing bit 0 lowers INTx (reads 0).
        case irqAck = 0x34
    }

    /// What a DOORBELL write asks for: fill memory, checksum memory, or just interrupt.
    public enum Command: UInt32, Sendable {
        /// Write DMA_LEN bytes of the pattern at the DMA address.
        case fill = 1
        /// FNV-1a of DMA_LEN bytes at the DMA address into RESULT.
        case checksum = 2
        /// Just complete and raise the interrupt.
        case interrupt = 3
    }

    unowned let device: PCIDevice
    /// The registers, guarded by the device lock (handlers, reset hooks and jobs'
    /// `withDevice` hold it).
    private let regs: DeviceGuarded<[UInt32]>

    /// Builds the model on `device` (map it with ``PCIDevice/mapRegisters(bar:range:handler:)``).
    public init(device: PCIDevice) {
        self.device = device
        regs = DeviceGuarded(Self.powerOnRegisters, lock: device.lock)
        device.onReset { [weak self] _ in self?.regs.value = Self.powerOnRegisters }
    }

    private static var powerOnRegisters: [UInt32] {
        var r = [UInt32](repeating: 0, count: Int(size / 4))
        r[0] = magic
        r[1] = version
        return r
    }

    private func reg(_ r: Register) -> UInt32 { regs.value[Int(r.rawValue / 4)] }
    private func set(_ r: Register, _ v: UInt32) { regs.value[Int(r.rawValue / 4)] = v }

    /// Reads the registers (DOORBELL and IRQ_ACK read 0).
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(Self.size))
        for (i, v) in regs.value.enumerated() where i != Int(Register.doorbell.rawValue / 4) && i != Int(Register.irqAck.rawValue / 4) {
            bytes.setLE32(v, at: i * 4)
        }
        return Array(bytes[Int(offset)..<(Int(offset) + count)])
    }

    /// Writes registers; a DOORBELL write starts a command as a device job.
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        // Merge partial writes into the dwords they touch, then act per dword.
        var pos = Int(offset)
        var it = data.makeIterator()
        while pos < Int(offset) + data.count {
            let d = pos & ~3
            var bytes = [UInt8](repeating: 0, count: 4)
            bytes.setLE32(regs.value[d / 4], at: 0)
            while pos < d + 4 && pos < Int(offset) + data.count, let b = it.next() {
                bytes[pos - d] = b
                pos += 1
            }
            writeRegister(UInt64(d), bytes.le32(at: 0))
        }
    }

    private func writeRegister(_ offset: UInt64, _ value: UInt32) {
        guard let r = Register(rawValue: offset) else { return }
        switch r {
        case .scratch, .dmaAddressLow, .dmaAddressHigh, .dmaLength, .pattern, .irqVector:
            set(r, value)
        case .doorbell:
            ring(value)
        case .irqAck:
            if value & 1 != 0 { device.deassertINTx() }
        default:
            break  // read-only
        }
    }

    /// The doorbell write completes at once; the command runs as a device job
    /// afterwards (its DMA may wait on the client), then publishes ERROR, RESULT and
    /// COMPLETIONS together and raises the completion interrupt, as hardware would.
    /// A reset before the job ends cancels it: nothing is published.
    private func ring(_ command: UInt32) {
        guard let cmd = Command(rawValue: command) else {
            set(.error, VFIOErrno.EINVAL.rawValue)
            return
        }
        let address = UInt64(reg(.dmaAddressHigh)) << 32 | UInt64(reg(.dmaAddressLow))
        let length = reg(.dmaLength), pattern = reg(.pattern), vector = Int(reg(.irqVector))
        device.submitWork { [weak self] job in
            var error: VFIOErrno? = nil
            var result: UInt32? = nil
            switch cmd {
            case .fill:
                if length > Self.maxTransfer { error = .E2BIG; break }
                let data = Self.fillPattern(pattern, length: Int(length))
                do throws(VFIOErrno) { try job.dmaWrite(address: address, data) } catch let e { error = e }
            case .checksum:
                if length > Self.maxTransfer { error = .E2BIG; break }
                do throws(VFIOErrno) { result = Self.fnv1a(try job.dmaRead(address: address, count: Int(length))) } catch let e { error = e }
            case .interrupt:
                break
            }
            job.withDevice { device in
                guard let self else { return }
                if let result { self.set(.result, result) }
                self.set(.error, error?.rawValue ?? 0)
                self.set(.completions, self.reg(.completions) &+ 1)
                if device.raiseInterrupt(vector: vector) != nil { self.set(.irqCount, self.reg(.irqCount) &+ 1) }
            }
        }
    }

    /// FILL's data: little-endian dwords `pattern`, `pattern + 1`, ..., cut to `length`.
    static func fillPattern(_ pattern: UInt32, length: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: (length + 3) & ~3)
        for i in 0..<(bytes.count / 4) { bytes.setLE32(pattern &+ UInt32(i), at: i * 4) }
        return Array(bytes.prefix(length))
    }

    /// FNV-1a, 32-bit: the checksum the CHECKSUM command leaves in RESULT.
    public static func fnv1a(_ data: [UInt8]) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in data { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return h
    }
}
