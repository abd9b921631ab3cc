import PCICore

/// Turns a spec document into a `DeviceSpec`, checking every field.
enum SpecParser {
    static func parse(_ root: SpecNode, sectionKeys: Set<String>) throws(SpecError) -> DeviceSpec {
        let top = try root.object(allowed: DeviceSpec.coreKeys.union(sectionKeys))
        guard let nameNode = top["name"] else { throw root.error("missing required key 'name'") }
        let name = try nameNode.string()
        guard !name.isEmpty else { throw nameNode.error("must not be empty") }
        guard let idsNode = top["ids"] else { throw root.error("missing required key 'ids'") }
        var c = PCIDeviceConfiguration(name: name, identity: try identity(idsNode))

        if let e = top["express"] { try express(e, into: &c) }
        if let b = top["bars"] { c.bars = try bars(b) }
        if let r = top["rom"] {
            let o = try r.object(allowed: ["size"])
            guard let s = o["size"] else { throw r.error("missing required key 'size'") }
            c.romSize = try s.unsigned(max: 16 << 20)
            guard c.romSize.nonzeroBitCount == 1, c.romSize >= 2048 else { throw s.error("must be a power of two of at least 2 KiB") }
        }
        if let i = top["interrupts"] { try interrupts(i, into: &c) }
        if let caps = top["capabilities"] { try capabilities(caps, into: &c) }
        var freeSpace: Int? = nil
        if let ext = top["extendedCapabilities"] { freeSpace = try extendedCapabilities(ext, into: &c) }
        if let regs = top["registers"] { c.registers = try registers(regs, bars: c.bars) }
        if let r = top["reset"] { c.resetSupported = try r.bool() }
        var doorbell: DoorbellPlacement? = nil
        if let d = top["doorbell"] {
            let o = try d.object(allowed: ["bar", "offset"])
            guard let b = o["bar"] else { throw d.error("missing required key 'bar'") }
            let bar = try b.int(in: 0...5)
            let off = try o["offset"]?.unsigned() ?? 0
            guard let desc = c.bars.first(where: { $0.index == bar }) else { throw b.error("BAR\(bar) is not declared in 'bars'") }
            guard desc.backing == .registers, desc.kind != .io else { throw b.error("the doorbell needs a register-backed memory BAR") }
            guard off % 4 == 0, off + 0x40 <= desc.size else {
                throw (o["offset"] ?? d).error("the doorbell's 64 bytes at 0x\(String(off, radix: 16)) do not fit in BAR\(bar) (or are not dword-aligned)")
            }
            doorbell = DoorbellPlacement(bar: bar, offset: off)
        }
        var sections: [String: SpecNode] = [:]
        // `faults` is the control plane's (VFIOUserControl's FaultScenario parses it).
        for k in sectionKeys.union(["faults"]) { if let n = top[k] { sections[k] = n } }
        // Whole-configuration checks the core performs (BAR overlap, MSI-X fit, capability layout).
        do { try c.validate() } catch {
            throw SpecError(file: root.file, field: error.subject, reason: error.reason)
        }
        var spec = DeviceSpec(file: root.file, name: name, description: try top["description"]?.string() ?? "",
                              variant: try top["variant"]?.string(), configuration: c, doorbell: doorbell,
                              sections: sections, directory: ".")
        spec.freeSpaceDVSEC = freeSpace
        if let i = freeSpace {
            // The list only grows the DVSEC: check now that the final layout fits.
            do { _ = try FreeSpaceDVSEC.resolve(c, at: i) } catch {
                throw SpecError(file: root.file, field: "extendedCapabilities[\(i)]", reason: error.reason)
            }
        }
        return spec
    }

    static func identity(_ n: SpecNode) throws(SpecError) -> PCIIdentity {
        let o = try n.object(allowed: ["vendor", "device", "subsystemVendor", "subsystem", "revision", "classCode"])
        guard let v = o["vendor"] else { throw n.error("missing required key 'vendor'") }
        guard let d = o["device"] else { throw n.error("missing required key 'device'") }
        let vendor = UInt16(try v.unsigned(max: 0xFFFF))
        guard vendor != 0xFFFF, vendor != 0 else { throw v.error("0x\(String(vendor, radix: 16)) is not a valid vendor ID") }
        return PCIIdentity(
            vendor: vendor, device: UInt16(try d.unsigned(max: 0xFFFF)),
            subsystemVendor: UInt16(try o["subsystemVendor"]?.unsigned(max: 0xFFFF) ?? 0),
            subsystem: UInt16(try o["subsystem"]?.unsigned(max: 0xFFFF) ?? 0),
            revision: UInt8(try o["revision"]?.unsigned(max: 0xFF) ?? 0),
            classCode: UInt32(try o["classCode"]?.unsigned(max: 0xFF_FFFF) ?? 0xFF0000))
    }

    static func express(_ n: SpecNode, into c: inout PCIDeviceConfiguration) throws(SpecError) {
        if case .bool(let b) = n.value { c.express = b; return }
        let o = try n.object(allowed: ["flr", "linkSpeed", "linkWidth", "atomicOps", "offset", "maxPayload"])
        c.express = true
        var p = ExpressParameters()
        if let f = o["flr"] { p.functionLevelReset = try f.bool() }
        if let s = o["linkSpeed"] { p.linkSpeed = try s.int(in: 1...6) }
        if let w = o["linkWidth"] {
            p.linkWidth = try w.int(in: 1...32)
            guard [1, 2, 4, 8, 12, 16, 32].contains(p.linkWidth) else { throw w.error("must be 1, 2, 4, 8, 12, 16 or 32") }
        }
        if let m = o["maxPayload"] {
            let v = try m.int(in: 128...4096)
            guard v.nonzeroBitCount == 1 else { throw m.error("must be 128, 256, 512, 1024, 2048 or 4096") }
            p.maxPayloadSizeSupported = v.trailingZeroBitCount - 7
        }
        if let a = o["atomicOps"] {
            let ao = try a.object(allowed: ["completer32", "completer64", "completer128", "routing"])
            p.atomicCompleter32 = try ao["completer32"]?.bool() ?? false
            p.atomicCompleter64 = try ao["completer64"]?.bool() ?? false
            p.atomicCompleter128 = try ao["completer128"]?.bool() ?? false
            p.atomicRouting = try ao["routing"]?.bool() ?? false
        }
        if let off = o["offset"] { c.expressOffset = try off.int(in: 0x40...0xFC) }
        c.expressParameters = p
    }

    static func bars(_ n: SpecNode) throws(SpecError) -> [BARDescriptor] {
        var out: [BARDescriptor] = []
        for b in try n.array() {
            let o = try b.object(allowed: ["index", "size", "kind", "bits", "prefetchable", "backing", "mmap", "preserveOnReset"])
            guard let i = o["index"] else { throw b.error("missing required key 'index'") }
            guard let s = o["size"] else { throw b.error("missing required key 'size'") }
            let index = try i.int(in: 0...5)
            let size = try s.unsigned()
            guard size.nonzeroBitCount == 1 else { throw s.error("\(SpecNode.show(size)) is not a power of two") }
            let kindName = try o["kind"]?.string() ?? "memory"
            let bits = try o["bits"]?.int(in: 32...64) ?? 32
            guard bits == 32 || bits == 64 else { throw o["bits"]!.error("must be 32 or 64") }
            let kind: BARDescriptor.Kind
            switch kindName {
            case "memory": kind = bits == 64 ? .memory64 : .memory32
            case "io":
                guard bits == 32 else { throw o["bits"]!.error("I/O BARs are 32-bit") }
                kind = .io
            default: throw o["kind"]!.error("'\(kindName)' is not memory or io")
            }
            let backingName = try o["backing"]?.string() ?? "registers"
            let backing: BARDescriptor.Backing
            switch backingName {
            case "registers":
                if o["mmap"] != nil { throw o["mmap"]!.error("only RAM-backed BARs can be mmap'd") }
                backing = .registers
            case "ram":
                backing = .ram(mmap: try o["mmap"]?.bool() ?? true, preserveOnReset: try o["preserveOnReset"]?.bool() ?? true)
            default: throw o["backing"]!.error("'\(backingName)' is not registers or ram")
            }
            let d = BARDescriptor(index: index, size: size, kind: kind, prefetchable: try o["prefetchable"]?.bool() ?? false,
                                  backing: backing)
            if let clash = out.first(where: { e in
                let a = e.kind == .memory64 ? [e.index, e.index + 1] : [e.index]
                let bb = d.kind == .memory64 ? [d.index, d.index + 1] : [d.index]
                return !Set(a).isDisjoint(with: bb)
            }) {
                throw b.error("BAR\(d.index) overlaps BAR\(clash.index)\(clash.kind == .memory64 ? " (64-bit, uses two slots)" : "")")
            }
            out.append(d)
        }
        return out
    }

    static func interrupts(_ n: SpecNode, into c: inout PCIDeviceConfiguration) throws(SpecError) {
        let o = try n.object(allowed: ["intx", "msi", "msix", "err", "req"])
        if let p = o["intx"] {
            let s = try p.string()
            switch s {
            case "none": c.interruptPin = 0
            case "A", "B", "C", "D": c.interruptPin = UInt8(s.unicodeScalars.first!.value - 64)
            default: throw p.error("'\(s)' is not A, B, C, D or none")
            }
        }
        if let m = o["msi"] {
            let mo = try m.object(allowed: ["vectors", "address64", "perVectorMask", "offset"])
            guard let v = mo["vectors"] else { throw m.error("missing required key 'vectors'") }
            let vectors = try v.int(in: 1...32)
            guard vectors.nonzeroBitCount == 1 else { throw v.error("\(vectors) is not 1, 2, 4, 8, 16 or 32") }
            c.msi = MSIConfiguration(vectors: vectors, address64: try mo["address64"]?.bool() ?? true,
                                     perVectorMask: try mo["perVectorMask"]?.bool() ?? true,
                                     offset: try mo["offset"]?.int(in: 0x40...0xFC))
        }
        if let x = o["msix"] {
            let xo = try x.object(allowed: ["vectors", "bar", "tableOffset", "pbaBar", "pbaOffset", "offset"])
            guard let v = xo["vectors"] else { throw x.error("missing required key 'vectors'") }
            guard let b = xo["bar"] else { throw x.error("missing required key 'bar'") }
            let vectors = try v.int(in: 1...2048)
            let bar = try b.int(in: 0...5)
            let table = UInt32(try xo["tableOffset"]?.unsigned(max: 0xFFFF_FFF8) ?? 0)
            let pbaDefault = (UInt64(table) + UInt64(vectors * 16) + 7) & ~7
            c.msix = MSIXConfiguration(vectors: vectors, tableBAR: bar, tableOffset: table,
                                       pbaBAR: try xo["pbaBar"]?.int(in: 0...5) ?? bar,
                                       pbaOffset: UInt32(try xo["pbaOffset"]?.unsigned(max: 0xFFFF_FFF8) ?? pbaDefault),
                                       offset: try xo["offset"]?.int(in: 0x40...0xFC))
        }
        if let e = o["err"] { c.errInterrupt = try e.bool() }
        if let r = o["req"] { c.reqInterrupt = try r.bool() }
    }

    static func capabilities(_ n: SpecNode, into c: inout PCIDeviceConfiguration) throws(SpecError) {
        for cap in try n.array() {
            guard case .object(let raw) = cap.value, case .string(let id)? = raw["id"] else {
                throw cap.error("each capability needs an 'id' (pm or vendor)")
            }
            switch id {
            case "pm":
                let o = try cap.object(allowed: ["id", "offset"])
                c.powerManagement = true
                c.powerManagementOffset = try o["offset"]?.int(in: 0...0xFF)
            case "vendor":
                let o = try cap.object(allowed: ["id", "offset", "bytes", "writable"])
                let data = try o["bytes"]?.hexBytes() ?? []
                guard data.count <= 0xC0 - 3 else { throw o["bytes"]!.error("a vendor capability holds at most \(0xC0 - 3) bytes") }
                c.capabilities.append(.vendorSpecific(data, writable: try o["writable"]?.bool() ?? false,
                                                      offset: try o["offset"]?.int(in: 0...0xFF)))
            default:
                throw cap.error("unknown capability id '\(id)' (pm or vendor; MSI, MSI-X and Express come from 'interrupts' and 'express')")
            }
        }
    }

    /// Returns the index of the free-space DVSEC placeholder, if the spec asks for one.
    static func extendedCapabilities(_ n: SpecNode, into c: inout PCIDeviceConfiguration) throws(SpecError) -> Int? {
        var freeSpace: Int? = nil
        for cap in try n.array() {
            guard case .object(let raw) = cap.value, case .string(let id)? = raw["id"] else {
                throw cap.error("each extended capability needs an 'id' (dsn, vsec, pasid, dvsec or free-space-dvsec)")
            }
            guard c.express else { throw cap.error("extended capabilities need \"express\": true") }
            switch id {
            case "dsn":
                let o = try cap.object(allowed: ["id", "offset", "serial"])
                guard let s = o["serial"] else { throw cap.error("missing required key 'serial'") }
                c.extendedCapabilities.append(.serialNumber(try s.unsigned(), offset: try o["offset"]?.int(in: 0...0xFFF)))
            case "vsec":
                let o = try cap.object(allowed: ["id", "offset", "vsecId", "revision", "bytes"])
                c.extendedCapabilities.append(.vendorSpecific(
                    vsecID: UInt16(try o["vsecId"]?.unsigned(max: 0xFFFF) ?? 0), revision: UInt8(try o["revision"]?.unsigned(max: 0xF) ?? 0),
                    data: try o["bytes"]?.hexBytes() ?? [], offset: try o["offset"]?.int(in: 0...0xFFF)))
            case "pasid":
                let o = try cap.object(allowed: ["id", "offset", "maxWidth", "execute", "privileged"])
                c.extendedCapabilities.append(.pasid(maxWidth: try o["maxWidth"]?.int(in: 1...20) ?? 20,
                                                     execute: try o["execute"]?.bool() ?? false,
                                                     privileged: try o["privileged"]?.bool() ?? false,
                                                     offset: try o["offset"]?.int(in: 0...0xFFF)))
            case "dvsec":
                let o = try cap.object(allowed: ["id", "offset", "vendor", "revision", "dvsecId", "bytes"])
                guard let v = o["vendor"] else { throw cap.error("missing required key 'vendor'") }
                c.extendedCapabilities.append(.designatedVendorSpecific(
                    vendor: UInt16(try v.unsigned(max: 0xFFFF)), revision: UInt8(try o["revision"]?.unsigned(max: 0xF) ?? 0),
                    dvsecID: UInt16(try o["dvsecId"]?.unsigned(max: 0xFFFF) ?? 0), data: try o["bytes"]?.hexBytes() ?? [],
                    offset: try o["offset"]?.int(in: 0...0xFFF)))
            case "free-space-dvsec":
                // Our convention (docs/protocol-extensions.md): a DVSEC listing the unused
                // extended-config ranges; filled in when the device is built.
                let o = try cap.object(allowed: ["id", "offset", "vendor", "revision", "dvsecId"])
                guard freeSpace == nil else { throw cap.error("only one free-space DVSEC per device") }
                freeSpace = c.extendedCapabilities.count
                c.extendedCapabilities.append(FreeSpaceDVSEC.capability(
                    vendor: UInt16(try o["vendor"]?.unsigned(max: 0xFFFF) ?? UInt64(c.identity.vendor)),
                    revision: UInt8(try o["revision"]?.unsigned(max: 0xF) ?? UInt64(FreeSpaceDVSEC.defaultRevision)),
                    dvsecID: UInt16(try o["dvsecId"]?.unsigned(max: 0xFFFF) ?? UInt64(FreeSpaceDVSEC.defaultDVSECID)),
                    ranges: [], offset: try o["offset"]?.int(in: 0...0xFFF)))
            default:
                throw cap.error("unknown extended capability id '\(id)' (dsn, vsec, pasid, dvsec or free-space-dvsec)")
            }
        }
        return freeSpace
    }

    static func registers(_ n: SpecNode, bars: [BARDescriptor]) throws(SpecError) -> [RegisterDefinition] {
        var out: [RegisterDefinition] = []
        for r in try n.array() {
            let o = try r.object(allowed: ["bar", "offset", "size", "value", "writable", "writeMask"])
            guard let b = o["bar"], let off = o["offset"] else { throw r.error("needs 'bar' and 'offset'") }
            let bar = try b.int(in: 0...5)
            let width = try o["size"]?.int(in: 1...8) ?? 4
            guard [1, 2, 4, 8].contains(width) else { throw o["size"]!.error("must be 1, 2, 4 or 8") }
            let offset = try off.unsigned()
            guard offset % UInt64(width) == 0 else { throw off.error("a \(width)-byte register must be naturally aligned") }
            let maxValue: UInt64 = width == 8 ? .max : (1 << (8 * UInt64(width))) - 1
            let value = try o["value"]?.unsigned(max: maxValue) ?? 0
            var mask: UInt64 = 0
            if let w = o["writable"], try w.bool() { mask = maxValue }
            if let m = o["writeMask"] { mask = try m.unsigned(max: maxValue) }
            guard let desc = bars.first(where: { $0.index == bar }) else { throw b.error("BAR\(bar) is not declared in 'bars'") }
            guard desc.backing == .registers else { throw b.error("BAR\(bar) is RAM-backed; registers need a register BAR") }
            guard offset + UInt64(width) <= min(desc.size, 1 << 20) else {
                throw off.error("0x\(String(offset, radix: 16)) + \(width) lies outside BAR\(bar) (\(SpecNode.show(desc.size)) bytes)")
            }
            if let clash = out.first(where: { $0.bar == bar && $0.offset < offset + UInt64(width) && offset < $0.offset + UInt64($0.width) }) {
                throw off.error("overlaps the register at 0x\(String(clash.offset, radix: 16))")
            }
            out.append(RegisterDefinition(bar: bar, offset: offset, width: width, value: value, writeMask: mask))
        }
        return out
    }
}
