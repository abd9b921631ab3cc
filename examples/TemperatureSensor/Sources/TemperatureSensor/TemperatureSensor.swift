// An example variant device written only against the public API of PCICore,
// DeviceSpecs and VariantDevices (plus VFIOUserProtocol for `VFIOErrno` and the
// region type constants, which appear in PCICore's public signatures).
//
// See examples/TemperatureSensor/README.md for how to copy it and wire it into a build.
import DeviceSpecs
import PCICore
import VFIOUserProtocol
import VariantDevices

/// What the spec's `temperatureSensor` section says (all optional).
public struct TemperatureSensorSettings: Sendable, Equatable {
    /// Register-backed memory BAR that holds the sensor's registers, and where.
    public var bar = 0
    public var offset: UInt64 = 0
    /// Power-on threshold and first reading, in milli-degrees Celsius.
    public var threshold: Int32 = 85_000
    public var initialReading: Int32 = 25_000
    /// Power-on MSI-X vector for threshold interrupts.
    public var vector: UInt32 = 0

    public init() {}
}

/// The device model: a register block in a BAR plus a "sensor port" region.
///
/// Registers (32-bit, offsets from `settings.offset`):
///
/// | offset | name | access |
/// |---|---|---|
/// | 0x00 | ID | RO, `0x504D4554` ("TEMP") |
/// | 0x04 | TEMPERATURE | RO, last reading, milli-°C (signed) |
/// | 0x08 | THRESHOLD | RW, milli-°C (signed) |
/// | 0x0C | CONTROL | RW, bit 0 = interrupt on an upward threshold crossing |
/// | 0x10 | STATUS | W1C, bit 0 = the threshold was crossed |
/// | 0x14 | IRQ_VECTOR | RW, MSI-X vector to raise |
/// | 0x18 | CROSSINGS | RO, number of upward crossings since reset |
///
/// The sensor port (a device-specific region, type `pciVendor(vendor)` subtype 1,
/// 8 bytes) is how the host feeds the sensor: writing a signed 32-bit milli-°C
/// value at offset 0 is a new reading. Embedding code can call `record(_:)` instead.
///
/// Thread safety: the registers live in a `DeviceGuarded` box, which only code
/// holding the device lock may touch. Handlers, reset hooks and a job's `withDevice`
/// already hold it (the core takes it before calling them); `record(_:)` takes it.
public final class TemperatureSensorModel: RegionAccessHandler, Sendable {
    public static let registerBlockSize: UInt64 = 0x20
    public static let idValue: UInt32 = 0x504D_4554
    public static let sensorPortSubtype: UInt32 = 1

    public enum Register: UInt64 {
        case id = 0x00, temperature = 0x04, threshold = 0x08, control = 0x0C, status = 0x10, irqVector = 0x14, crossings = 0x18
    }

    public static let controlInterruptEnable: UInt32 = 1
    public static let statusCrossed: UInt32 = 1

    unowned let device: PCIDevice
    public let settings: TemperatureSensorSettings

    /// The model's registers.
    struct Registers {
        var temperature: Int32
        var threshold: Int32 = 0
        var control: UInt32 = 0
        var status: UInt32 = 0
        var irqVector: UInt32 = 0
        var crossings: UInt32 = 0
    }
    private let regs: DeviceGuarded<Registers>

    public init(device: PCIDevice, settings: TemperatureSensorSettings) {
        self.device = device
        self.settings = settings
        regs = DeviceGuarded(Registers(temperature: settings.initialReading), lock: device.lock)
        regs.withLock { Self.resetRegisters(&$0, settings) }
        // The core has already restored config space, interrupts and the MSI-X table;
        // the model puts its own registers back. The reading is the physical
        // temperature, which a reset does not change.
        device.onReset { [weak self] _ in
            guard let self else { return }
            Self.resetRegisters(&self.regs.value, self.settings)
        }
    }

    private static func resetRegisters(_ r: inout Registers, _ settings: TemperatureSensorSettings) {
        r.threshold = settings.threshold
        r.control = 0
        r.status = 0
        r.irqVector = settings.vector
        r.crossings = 0
    }

    /// A new reading from the sensor. An upward crossing of the threshold sets
    /// STATUS bit 0 and, when CONTROL enables it, raises the MSI-X vector in
    /// IRQ_VECTOR (pending if the guest masked it; the core delivers it on unmask).
    ///
    /// The reading registers at once; what the crossing sets off runs as a device job
    /// (`PCIDevice.submitWork`), after the access that fed the reading has been
    /// answered, as a sensor's alarm logic would. A reset in between cancels it.
    public func record(_ milliCelsius: Int32) {
        regs.withLock { r in
            let old = r.temperature
            r.temperature = milliCelsius
            guard old < r.threshold, milliCelsius >= r.threshold else { return }
            device.submitWork { [weak self] job in
                job.withDevice { device in
                    guard let self else { return }
                    self.regs.value.status |= Self.statusCrossed
                    self.regs.value.crossings &+= 1
                    if self.regs.value.control & Self.controlInterruptEnable != 0 {
                        device.raiseInterrupt(vector: Int(self.regs.value.irqVector))
                    }
                }
            }
        }
    }

    // MARK: RegionAccessHandler (the register block; offsets are relative to it)

    private func value(_ r: Register) -> UInt32 {
        let v = regs.value
        switch r {
        case .id: return Self.idValue
        case .temperature: return UInt32(bitPattern: v.temperature)
        case .threshold: return UInt32(bitPattern: v.threshold)
        case .control: return v.control
        case .status: return v.status
        case .irqVector: return v.irqVector
        case .crossings: return v.crossings
        }
    }

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: Int(Self.registerBlockSize))
        for d in stride(from: 0, to: Int(Self.registerBlockSize), by: 4) {
            guard let r = Register(rawValue: UInt64(d)) else { continue }
            let v = value(r)
            for k in 0..<4 { block[d + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
        }
        return Array(block[Int(offset)..<(Int(offset) + count)])
    }

    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        // Merge a partial write into each dword it touches, then apply it per dword.
        var pos = Int(offset)
        let end = Int(offset) + data.count
        var i = data.startIndex
        while pos < end {
            let d = pos & ~3
            guard let r = Register(rawValue: UInt64(d)) else { pos = d + 4; i = data.startIndex + (pos - Int(offset)); continue }
            var v = value(r)
            var written: UInt32 = 0
            while pos < d + 4 && pos < end {
                let shift = UInt32(8 * (pos - d))
                v = (v & ~(0xFF << shift)) | UInt32(data[i]) << shift
                written |= 0xFF << shift
                pos += 1
                i += 1
            }
            switch r {
            case .threshold: regs.value.threshold = Int32(bitPattern: v)
            case .control: regs.value.control = v & Self.controlInterruptEnable
            case .status: regs.value.status &= ~(v & written & Self.statusCrossed)   // write 1 to clear
            case .irqVector: regs.value.irqVector = v
            case .id, .temperature, .crossings: break                      // read-only
            }
        }
    }

    /// The handler of the sensor-port region.
    var sensorPort: any RegionAccessHandler {
        ClosureRegionHandler(
            read: { [unowned self] o, n throws(VFIOErrno) in
                var b = [UInt8](repeating: 0, count: 8)
                let t = UInt32(bitPattern: self.regs.value.temperature)
                for k in 0..<4 { b[k] = UInt8(truncatingIfNeeded: t >> (8 * UInt32(k))) }
                return Array(b[Int(o)..<(Int(o) + n)])
            },
            write: { [unowned self] o, data throws(VFIOErrno) in
                // Only a whole reading at offset 0 means something.
                guard o == 0, data.count == 4 else { throw .EINVAL }
                var v: UInt32 = 0
                for (k, b) in data.enumerated() { v |= UInt32(b) << (8 * UInt32(k)) }
                self.record(Int32(bitPattern: v))
            })
    }
}

/// The variant driver: id table, probe and build, like a vfio-pci variant module.
public struct TemperatureSensorDriver: VariantDriver {
    public init() {}

    public var name: String { "temperature-sensor" }
    public var summary: String { "example: a temperature sensor with a threshold MSI-X interrupt and a sensor-port region" }
    /// Example IDs only: use your own vendor's IDs for a real device.
    public var idTable: [PCIMatch] { [PCIMatch(vendor: 0x1b36, device: 0x10f0)] }
    /// The spec section this variant reads (unknown to the core and to other variants).
    public var sectionKeys: Set<String> { ["temperatureSensor"] }

    public func probe(_ spec: DeviceSpec) -> ProbeResult {
        let c = spec.configuration
        guard let x = c.msix else { return .decline("needs interrupts.msix for its threshold interrupt") }
        let s: TemperatureSensorSettings
        do { s = try Self.settings(spec) } catch { return .decline(error.description) }
        guard let bar = c.bars.first(where: { $0.index == s.bar }), bar.backing == .registers, bar.kind != .io else {
            return .decline("BAR\(s.bar) must be a register-backed memory BAR")
        }
        guard s.offset % 4 == 0, s.offset + TemperatureSensorModel.registerBlockSize <= bar.size else {
            return .decline("the register block does not fit at 0x\(String(s.offset, radix: 16)) in BAR\(s.bar)")
        }
        guard Int(s.vector) < x.vectors else { return .decline("temperatureSensor.vector \(s.vector) exceeds the MSI-X table") }
        return .accept
    }

    public func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice {
        let s = try Self.settings(spec)
        let device = try spec.buildCoreDevice()
        let model = TemperatureSensorModel(device: device, settings: s)
        do {
            try device.mapRegisters(bar: s.bar, range: s.offset..<(s.offset + TemperatureSensorModel.registerBlockSize),
                                    handler: model)
        } catch {
            throw spec.error("temperatureSensor.offset",
                             "the register block overlaps another register range in BAR\(s.bar) (\(error))")
        }
        device.addDeviceSpecificRegion(size: 8, type: RegionType.pciVendor(spec.configuration.identity.vendor),
                                       subtype: TemperatureSensorModel.sensorPortSubtype, readable: true, writable: true,
                                       backing: .handler(model.sensorPort))
        return device
    }

    /// Reads the optional `temperatureSensor` section; errors name the field.
    public static func settings(_ spec: DeviceSpec) throws(SpecError) -> TemperatureSensorSettings {
        var s = TemperatureSensorSettings()
        guard let node = spec.sections["temperatureSensor"] else { return s }
        let o = try node.object(allowed: ["bar", "offset", "threshold", "initial", "vector"])
        if let b = o["bar"] { s.bar = try b.int(in: 0...5) }
        if let off = o["offset"] { s.offset = try off.unsigned(max: 1 << 20) }
        if let t = o["threshold"] { s.threshold = Int32(try t.int(in: 0...200_000)) }
        if let i = o["initial"] { s.initialReading = Int32(try i.int(in: 0...200_000)) }
        if let v = o["vector"] { s.vector = UInt32(try v.int(in: 0...2047)) }
        return s
    }
}
