import DeviceSpecs
import PCICore
import TemperatureSensor
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport
import VariantDevices

/// Serves the temperature sensor through the variant registry and drives it like a
/// guest driver would, through the client library, over a real Unix socket.
@Suite struct TemperatureSensorTests {
    static let specPath = packageRoot + "/temperature-sensor.json"
    static let registry = VariantRegistry(drivers: [TemperatureSensorDriver(), GenericDriver()])

    func serve() throws -> Served {
        let spec = try Self.registry.loadSpec(path: Self.specPath)
        let binding = try Self.registry.bind(spec)
        #expect(binding.driver.name == "temperature-sensor", "\(binding.reason)")
        return try Served(binding.driver.build(spec))
    }

    enum Reg: UInt64 { case id = 0x00, temperature = 0x04, threshold = 0x08, control = 0x0C, status = 0x10, vector = 0x14, crossings = 0x18 }
    func reg(_ s: Served, _ r: Reg) throws -> UInt32 { try s.client.read32(region: 0, offset: r.rawValue) }
    func set(_ s: Served, _ r: Reg, _ v: UInt32) throws { try s.client.write32(region: 0, offset: r.rawValue, v) }
    /// The sensor port: the first device-specific region.
    /// The crossing's effects run as a device job after the write is answered: wait for it.
    func sample(_ s: Served, _ milliCelsius: Int32) throws {
        try s.client.write(region: 9, offset: 0, le32(UInt32(bitPattern: milliCelsius)))
        #expect(s.device.work.waitUntilIdle())
    }

    @Test func theRegistryBindsTheExampleByItsIDTable() throws {
        let spec = try Self.registry.loadSpec(path: Self.specPath)
        #expect(TemperatureSensorDriver().probe(spec) == .accept)
        // Without MSI-X the probe declines and the generic driver takes the device.
        var bare = spec
        bare.configuration.msix = nil
        #expect(TemperatureSensorDriver().probe(bare) != .accept)
        #expect(try Self.registry.bind(bare).driver.name == "generic")
    }

    @Test func aThresholdCrossingRaisesTheMSIXVector() throws {
        let s = try serve()
        // Region table: BAR0 plus the sensor port as region 9 with a vendor type.
        #expect(try s.client.deviceInfo().numRegions == 10)
        let (port, _) = try s.client.regionInfo(9)
        #expect(port.size == 8 && port.flags.contains(.read) && port.flags.contains(.write))
        #expect(port.capabilities.contains { if case .type(RegionType.pciVendor(0x1b36), TemperatureSensorModel.sensorPortSubtype) = $0 { true } else { false } })

        try s.enableDecoding()
        #expect(try reg(s, .id) == TemperatureSensorModel.idValue)
        #expect(try reg(s, .temperature) == 25_000)
        #expect(try reg(s, .threshold) == 85_000)
        #expect(try reg(s, .vector) == 1)

        // The guest enables MSI-X, programs vector 1 unmasked, the VMM wires it.
        let cap = try s.capability(PCICapability.msixID)
        try s.set16(cap + 2, 0x8000)
        try s.client.write32(region: 0, offset: 0x810, 0xFEE0_0000)
        try s.client.write32(region: 0, offset: 0x818, 0x41)
        try s.client.write32(region: 0, offset: 0x81C, 0)
        let fd = try s.client.enableEventFDs(index: IRQIndex.msix.rawValue, start: 1, count: 1)[0]

        try set(s, .threshold, 60_000)
        try set(s, .control, 1)
        try sample(s, 59_000)
        #expect(silent(fd), "below the threshold")
        try sample(s, 61_500)
        #expect(signals(fd) == 1, "crossing upward raises vector 1")
        #expect(try reg(s, .temperature) == 61_500)
        #expect(try reg(s, .status) == 1)
        #expect(try reg(s, .crossings) == 1)
        #expect(try s.client.read(region: 9, offset: 0, count: 4) == le32(61_500))
        // Staying above does not raise again; STATUS is write-1-to-clear.
        try sample(s, 70_000)
        #expect(silent(fd))
        try set(s, .status, 1)
        #expect(try reg(s, .status) == 0)
        // Read-only registers ignore writes.
        try set(s, .temperature, 0)
        try set(s, .id, 0)
        #expect(try reg(s, .temperature) == 70_000 && reg(s, .id) == TemperatureSensorModel.idValue)

        // Masked in the MSI-X table: the crossing pends in the PBA until unmasked.
        try s.client.write32(region: 0, offset: 0x81C, 1)
        try sample(s, 10_000)
        try sample(s, 90_000)
        #expect(silent(fd))
        #expect(try s.client.read(region: 0, offset: 0xC00, count: 1) == [0x02])
        try s.client.write32(region: 0, offset: 0x81C, 0)
        #expect(signals(fd) == 1)
        #expect(try reg(s, .crossings) == 2)

        // With interrupts disabled in CONTROL, a crossing only sets STATUS.
        try set(s, .control, 0)
        try set(s, .status, 1)
        try sample(s, 0)
        try sample(s, 65_000)
        #expect(silent(fd))
        #expect(try reg(s, .status) == 1)
    }

    @Test func resetRestoresTheModelsRegistersButNotTheReading() throws {
        let s = try serve()
        try s.enableDecoding()
        try set(s, .threshold, 1_000)
        try set(s, .control, 1)
        try sample(s, 500)
        try sample(s, 2_000)
        #expect(try reg(s, .status) == 1)
        try s.client.reset()
        try s.enableDecoding()
        #expect(try reg(s, .threshold) == 85_000)
        #expect(try reg(s, .control) == 0)
        #expect(try reg(s, .status) == 0)
        #expect(try reg(s, .crossings) == 0)
        #expect(try reg(s, .temperature) == 2_000, "a reset does not change the temperature")
        // A partial sample write is refused.
        #expect(errnoOf { try s.client.write(region: 9, offset: 0, [1, 2]) } == .EINVAL)
    }
}
