import VFIOUserProtocol

/// Checks made before a migration changes any state, so that a refusal names its
/// cause and leaves both ends exactly as they were: a missing source file is found
/// before the destination enters RESUMING, a device without migration support is
/// named as such (not as the EINVAL of a DEVICE_FEATURE), and two different devices
/// are told apart with what differs.
extension Migrator {
    /// The opened source file, if the source is one.
    func preflight() throws(MigrationFailure) -> MigrationFile? {
        var file: MigrationFile? = nil
        if case .file(let path) = source { file = try MigrationFile.open(path) }
        do {
            if case .device(let s) = source { try Self.requireMigration(s, role: "source") }
            if case .device(let d) = destination { try Self.requireMigration(d, role: "destination") }
            if case .device(let s) = source, case .device(let d) = destination { try Self.requireSameKind(s, d) }
        } catch {
            file?.close()
            throw error
        }
        return file
    }

    static func requireMigration(_ c: VFIOUserClient, role: String) throws(MigrationFailure) {
        let flags: MigrationFeatureFlags
        do { flags = try c.migrationFlags() } catch {
            throw MigrationFailure(phase: "setup", error: error,
                                   reason: "the \(role) device cannot migrate: it does not offer VFIO migration (\(error))")
        }
        guard flags.contains(.stopCopy) else {
            throw MigrationFailure(phase: "setup", error: nil, reason: "the \(role) device cannot migrate: it does not offer STOP_COPY")
        }
    }

    /// The same ids and the same region sizes on both sides, or a failure saying
    /// which differ and both values.
    static func requireSameKind(_ s: VFIOUserClient, _ d: VFIOUserClient) throws(MigrationFailure) {
        func refuse(_ what: String) -> MigrationFailure {
            MigrationFailure(phase: "setup", error: nil, reason: "the destination is a different device: \(what)")
        }
        do {
            let config = RegionIndex.config.rawValue
            let ids = try [s, d].map { c throws(ClientError) in
                (try c.read(region: config, offset: 0, count: 4), try c.read(region: config, offset: 0x2C, count: 4))
            }
            func show(_ b: [UInt8]) -> String { hex16(b, 0) + ":" + hex16(b, 2) }
            if ids[0].0 != ids[1].0 || ids[0].1 != ids[1].1 {
                throw refuse("the source is \(show(ids[0].0)) (sub \(show(ids[0].1))), the destination \(show(ids[1].0)) (sub \(show(ids[1].1)))")
            }
            let counts = try [s, d].map { c throws(ClientError) in try c.deviceInfo().numRegions }
            for i in 0..<min(counts[0], counts[1], RegionIndex.config.rawValue + 1) {
                let a = try s.regionInfo(i).info.size, b = try d.regionInfo(i).info.size
                guard a == b else {
                    throw refuse("\(regionName(i)) is \(size(a)) on the source and \(size(b)) on the destination")
                }
            }
        } catch let e as MigrationFailure {
            throw e
        } catch {
            throw MigrationFailure(phase: "setup", error: error as? ClientError, reason: "cannot compare the two devices: \(error)")
        }
    }

    private static func hex16(_ b: [UInt8], _ at: Int) -> String {
        let v = UInt16(b[at]) | UInt16(b[at + 1]) << 8
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 4 - s.count) + s
    }

    private static func regionName(_ i: UInt32) -> String {
        switch i {
        case 0...5: "BAR\(i)"
        case RegionIndex.rom.rawValue: "the ROM"
        case RegionIndex.config.rawValue: "config space"
        default: "region \(i)"
        }
    }

    /// A size in the largest binary unit that divides it (sizes here are powers of two).
    static func size(_ v: UInt64) -> String {
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] as [(String, UInt64)]
        where v >= 1 << shift && v % (1 << shift) == 0 {
            return "\(v >> shift) \(unit)"
        }
        return v == 0 ? "absent (0 bytes)" : "\(v) bytes"
    }
}
