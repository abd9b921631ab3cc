import DeviceSpecs
import FoundationEssentials
import PCICore
import VFIOUserProtocol

/// Bytes served read-only (IGD OpRegion and bridge config regions). Writes fail with
/// EINVAL, as the kernel's do; the core already refuses them for a region that is
/// not writable, this is the second line.
final class ReadOnlyBytes: RegionAccessHandler, Sendable {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        guard offset <= UInt64(bytes.count), count <= bytes.count - Int(offset) else { throw .EINVAL }
        return Array(bytes[Int(offset)..<(Int(offset) + count)])
    }

    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) { throw .EINVAL }
}

/// Device memory larger than the memory behind it (NVLink2's GPU RAM window,
/// nvgrace's power-of-two fake BARs): bytes below `length` are the shared memory a
/// client may also mmap; bytes past it read as 0xFF and ignore writes.
final class WindowedMemory: RegionAccessHandler, Sendable {
    let memory: SharedMemory
    let length: UInt64

    init(memory: SharedMemory, length: UInt64) {
        self.memory = memory
        self.length = length
    }

    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        var out = [UInt8](repeating: 0xFF, count: count)
        if offset < length {
            let n = Int(min(UInt64(count), length - offset))
            let b = try memory.read(offset: offset, count: n)
            out.replaceSubrange(0..<n, with: b)
        }
        return out
    }

    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        guard offset < length else { return }
        let n = Int(min(UInt64(data.count), length - offset))
        try memory.write(offset: offset, data: data.prefix(n))
    }

    /// Installs the window as `index`'s backing: REGION_READ/WRITE go through it,
    /// mmap gets the memory (the sparse area `{0, length}` only).
    static func install(on device: PCIDevice, region index: UInt32, name: String, length: UInt64,
                        spec: DeviceSpec, field: String) throws(SpecError) -> SharedMemory {
        let mem: SharedMemory
        do { mem = try SharedMemory(name: name, size: Int((length + 4095) & ~4095)) } catch {
            throw spec.error(field, "cannot allocate \(length) bytes of shared memory: \(error)")
        }
        let handler = WindowedMemory(memory: mem, length: length)
        device.updateRegion(index) { r in
            r.backing = .handler(handler)
            r.mmapMemory = mem
            r.mmappable = true
            r.sparseAreas = [SparseMmapArea(offset: 0, size: length)]
        }
        return mem
    }
}

/// Where the standard capabilities sit in a built device's config space, from the
/// core's placement and each capability's own length rules.
enum ConfigFootprint {
    static func standardRanges(_ device: PCIDevice) -> [(id: UInt8, range: Range<Int>)] {
        device.lock.withLock {
            let caps = device.placedCapabilities.standard.sorted { $0.offset < $1.offset }
            return caps.enumerated().map { k, cap in
                let o = cap.offset, cfg = device.config
                let limit = k + 1 < caps.count ? caps[k + 1].offset : 0x100
                let len: Int
                switch cap.id {
                case PCICapability.powerManagementID: len = 8
                case PCICapability.msiID:
                    let ctl = cfg.load16(o + 2)
                    len = 10 + (ctl & 0x80 != 0 ? 4 : 0) + (ctl & 0x100 != 0 ? 10 : 0)
                case PCICapability.vendorSpecificID: len = Int(cfg.load8(o + 2))
                case PCICapability.expressID: len = 0x3C
                case PCICapability.msixID: len = 12
                default: len = limit - o
                }
                return (cap.id, o..<(o + len))
            }
        }
    }

    /// The capability (if any) whose bytes overlap `range`.
    static func clash(_ device: PCIDevice, _ range: Range<Int>) -> UInt8? {
        standardRanges(device).first { $0.range.overlaps(range) }?.id
    }
}

extension DeviceSpec {
    /// A file the spec names, relative to the spec's folder.
    func readNamedFile(_ name: String) -> [UInt8]? {
        let path = name.hasPrefix("/") ? name : directory + "/" + name
        return FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }
}

extension SpecNode {
    /// The members of an object node without checking its keys (for probes, which
    /// must not fail: the build reports bad keys).
    var members: [String: SpecNode] {
        guard case .object(let o) = value else { return [:] }
        var out: [String: SpecNode] = [:]
        for (k, v) in o { out[k] = SpecNode(file: file, path: path.isEmpty ? k : "\(path).\(k)", value: v) }
        return out
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
