import VFIOUserProtocol
import VFIOUserTransport

// What a reset leaves in config space. A DEVICE_RESET is a device reset as vfio's
// VFIO_DEVICE_RESET is (§3.10): the function returns to its power-on state, so the
// command register's I/O space, memory space and bus master bits read 0 afterwards
// (PCI 3.0 §6.2.2: the register's reset value is 0), as a Function Level Reset leaves
// them (PCIe §6.6.2). QEMU relies on it: after a reset it re-enables decoding itself.
extension ConformanceSuite {
    func resetState(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        guard mutating else {
            r.skip("reset.command-register", "changes the command register and resets: run with --disruptive or --server-cmd", "§3.10")
            return
        }
        guard info.flags.contains(.reset) else { r.skip("reset.command-register", "RESET flag not set", "§3.10"); return }
        guard let p = links.negotiated(&r, "reset.command-register") else { return }
        let decodeBits: UInt16 = 0x7   // I/O space, memory space, bus master

        // Sets the bits the device implements; returns the ones that stuck.
        func enable() -> UInt16? {
            guard let before = read16(p, 4) else { return nil }
            write16(p, 4, before | decodeBits)
            return read16(p, 4).map { $0 & decodeBits }
        }
        func bits(_ v: UInt16) -> String {
            [(0x1, "I/O"), (0x2, "memory"), (0x4, "bus master")].filter { v & $0.0 != 0 }.map(\.1).joined(separator: ", ")
        }
        guard let set = enable(), set != 0 else {
            r.skip("reset.command-register", "none of the command register's I/O, memory and bus-master bits can be set", "PCI 3.0 §6.2.2")
            return
        }
        let x = p.call(.deviceReset, [])
        let after = read16(p, 4)
        if isError(x) || after == nil {
            r.fail("reset.command-register", "DEVICE_RESET: \(show(x)); command register then \(after.map { "0x\(String($0, radix: 16))" } ?? "unreadable")", "§3.10")
        } else {
            let left = after! & decodeBits
            r.check(left == 0, "reset.command-register",
                    left == 0 ? "\(bits(set)) set, then DEVICE_RESET: command register 0x\(String(after!, radix: 16))"
                        : "\(bits(set)) set, then DEVICE_RESET: \(bits(left)) still set (command register 0x\(String(after!, radix: 16)); a reset returns it to 0)",
                    "§3.10, PCI 3.0 §6.2.2")
        }

        // Function Level Reset, where the Express capability offers it.
        guard let cfg = readConfig(p, 0, 256), let express = capability(cfg, 0x10), express + 10 <= 256 else {
            r.skip("reset.flr-command-register", "no PCI Express capability", "PCIe §6.6.2"); return
        }
        let devcap = cfg.le32(at: express + 4)
        guard devcap & (1 << 28) != 0 else {
            r.skip("reset.flr-command-register", "the Express capability does not offer FLR (Device Capabilities bit 28)", "PCIe §7.5.3.3"); return
        }
        guard let set2 = enable(), set2 != 0 else {
            r.skip("reset.flr-command-register", "the command register bits no longer stick", "PCIe §6.6.2"); return
        }
        let devctl = cfg.le16(at: express + 8)
        write16(p, express + 8, devctl | 0x8000)
        let cmd = read16(p, 4), ctl = read16(p, express + 8)
        let left = (cmd ?? 0xFFFF) & decodeBits
        r.check(cmd != nil && left == 0 && (ctl ?? 0) & 0x8000 == 0, "reset.flr-command-register",
                "\(bits(set2)) set, then Initiate FLR: command register \(cmd.map { "0x\(String($0, radix: 16))" } ?? "unreadable")"
                    + (left != 0 && cmd != nil ? " (\(bits(left)) still set)" : "")
                    + ((ctl ?? 0) & 0x8000 != 0 ? "; Initiate FLR reads back 1 (it always reads 0)" : ""),
                "PCIe §6.6.2, §7.5.3.4")
    }
}
