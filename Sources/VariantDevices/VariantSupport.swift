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
