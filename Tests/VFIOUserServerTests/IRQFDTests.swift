import Glibc
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// SET_IRQS EVENTFD|UNMASK / EVENTFD|MASK: the client signals an eventfd and the
/// device (un)masks the vector, as QEMU's INTx resample path does with KVM.
@Suite struct IRQFDTests {
    func serve() throws -> (PCIDevice, InProcessServer, VFIOUserClient) {
        var c = PCIDeviceConfiguration(name: "irqfd", identity: PCIIdentity(vendor: 0x1b36, device: 0x99))
        c.interruptPin = 1
        c.bars = [BARDescriptor(index: 0, size: 4096)]
        c.msix = MSIXConfiguration(vectors: 4, tableBAR: 0, tableOffset: 0x800, pbaBAR: 0, pbaOffset: 0xC00)
        let s = try InProcessServer(configuration: c, tag: "irqfd")
        return (s.device, s, try s.client())
    }

    @Test func anUnmaskEventFDRedeliversAStillAssertedINTx() throws {
        let (device, server, client) = try serve()
        defer { server.stop() }
        let trigger = try client.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)[0]
        let resample = try EventFD.create(nonBlocking: true)
        try client.setIRQs(index: IRQIndex.intx.rawValue, flags: [.dataEventFD, .actionUnmask], start: 0, count: 1,
                           fds: [resample.rawValue])
        device.lock.withLock { device.interrupts.assertINTx() }
        #expect(EventFD.wait(trigger.rawValue, timeoutMs: 1000) == 1)
        // Automasked: nothing more until the unmask arrives through the resample eventfd.
        #expect(EventFD.wait(trigger.rawValue, timeoutMs: 50) == 0)
        EventFD.signal(resample.rawValue)
        #expect(EventFD.wait(trigger.rawValue, timeoutMs: 1000) == 1)
        // After the line drops, an unmask delivers nothing.
        device.deassertINTx()
        EventFD.signal(resample.rawValue)
        #expect(EventFD.wait(trigger.rawValue, timeoutMs: 100) == 0)
    }

    @Test func aMaskEventFDHoldsMSIXVectorsPending() throws {
        let (device, server, client) = try serve()
        defer { server.stop() }
        let v1 = try client.enableEventFDs(index: IRQIndex.msix.rawValue, start: 1, count: 1)[0]
        let mask = try EventFD.create(nonBlocking: true)
        let unmask = try EventFD.create(nonBlocking: true)
        try client.setIRQs(index: IRQIndex.msix.rawValue, flags: [.dataEventFD, .actionMask], start: 1, count: 1, fds: [mask.rawValue])
        try client.setIRQs(index: IRQIndex.msix.rawValue, flags: [.dataEventFD, .actionUnmask], start: 1, count: 1, fds: [unmask.rawValue])
        EventFD.signal(mask.rawValue)
        // The watcher applies the mask asynchronously; wait until it shows.
        for _ in 0..<100 where !device.lock.withLock({ device.interrupts.isMasked(2, 1) }) { usleep(2000) }
        device.lock.withLock { device.interrupts.trigger(.msix, vector: 1) }
        #expect(EventFD.wait(v1.rawValue, timeoutMs: 50) == 0)
        #expect(device.lock.withLock { device.interrupts.isPending(.msix, vector: 1) })
        EventFD.signal(unmask.rawValue)
        #expect(EventFD.wait(v1.rawValue, timeoutMs: 1000) == 1)
        #expect(!device.lock.withLock { device.interrupts.isPending(.msix, vector: 1) })
    }
}
