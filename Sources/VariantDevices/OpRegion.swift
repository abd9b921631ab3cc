import VFIOUserProtocol

/// An Intel IGD OpRegion (reference §2.2, §2.3): the firmware table whose host
/// address sits in config dword 0xFC (ASLS), and the read-only view of it the
/// kernel's vfio-pci presents as region type 0x80008086 subtype 1.
///
/// The view is the kernel's "shift-copy": the first 8 KiB of the OpRegion, with
/// the version reported as 2.1 and RVDA as 0x2000 when an extended VBT exists,
/// followed by the extended VBT. A client therefore always sees a contiguous
/// version-2.1 layout whatever the host's version.
public struct OpRegion: Sendable, Equatable {
    /// The signature at offset 0.
    public static let signature = Array("IntelGraphicsMem".utf8)
    /// `OPREGION_SIZE`: what the kernel maps first, and where the extended VBT is shown.
    public static let baseSize = 0x2000
    /// Offset of the size field (KiB).
    public static let sizeOffset = 0x10
    /// Offset of the version field.
    public static let versionOffset = 0x16
    /// Offset of the MBOX (mailboxes present) field.
    public static let mailboxesOffset = 0x58
    /// Mailbox 3 (ASLE) fields.
    public static let rvdaOffset = 0x3BA
    /// RVDS: the extended VBT's size.
    public static let rvdsOffset = 0x3C2
    /// Mailbox 4: the VBT, up to 6 KiB.
    public static let vbtOffset = 0x400
    /// Mailbox 4's size: a VBT above it goes to the extended area.
    public static let vbtMailboxSize = 0x1800

    /// MBOX bits (i915 `intel_opregion.c`; reference §2.3 marks them unverified).
    public static let mailboxACPI: UInt32 = 1 << 0
    /// MBOX: mailbox 2, SWSCI.
    public static let mailboxSWSCI: UInt32 = 1 << 1
    /// MBOX: mailbox 3, ASLE.
    public static let mailboxASLE: UInt32 = 1 << 2
    /// MBOX: mailbox 5, ASLE extension.
    public static let mailboxASLEExt: UInt32 = 1 << 4
    /// MBOX: backlight.
    public static let mailboxBacklight: UInt32 = 1 << 5

    /// What the client reads from the OpRegion region.
    public let view: [UInt8]
    /// The version in the image (the view may say 2.1 instead).
    public let hostVersion: UInt16
    /// Where the extended VBT sits in the image, if there is one.
    public let extendedVBT: Range<Int>?

    /// Why an image cannot be used. The kernel fails the open with -EINVAL for these.
    public struct Invalid: Error, CustomStringConvertible, Equatable {
        /// What is wrong with the image.
        public var reason: String
        /// The reason.
        public var description: String { reason }
    }

    /// Checks `image` (the OpRegion as it sits in host memory at `hostAddress`, plus,
    /// after it, whatever RVDA points to) the way `vfio_pci_igd_opregion_init` does.
    public init(image: [UInt8], hostAddress: UInt32) throws(Invalid) {
        func fail(_ r: String) -> Invalid { Invalid(reason: r) }
        guard image.count >= Self.baseSize else { throw fail("the image is \(image.count) bytes; an OpRegion has at least 8 KiB") }
        guard Array(image[0..<16]) == Self.signature else { throw fail("the signature at 0x0 is not \"IntelGraphicsMem\"") }
        let kib = Int(image.le32(at: Self.sizeOffset))
        guard kib != 0 else { throw fail("the size field at 0x10 is 0") }
        let size = kib * 1024
        guard size <= image.count else { throw fail("the size field says \(kib) KiB but the image has \(image.count) bytes") }
        hostVersion = image.le16(at: Self.versionOffset)
        var ext: Range<Int>? = nil
        if hostVersion >= 0x0200 {
            let rvda = image.le64(at: Self.rvdaOffset), rvds = Int(image.le32(at: Self.rvdsOffset))
            if rvda != 0 && rvds != 0 {
                // 2.0: RVDA is a host physical address; 2.1+: relative to the OpRegion.
                let start: UInt64
                if hostVersion == 0x0200 {
                    guard rvda >= UInt64(hostAddress) else {
                        throw fail("version 2.0 RVDA 0x\(String(rvda, radix: 16)) (absolute) lies below the OpRegion at ASLS 0x\(String(hostAddress, radix: 16))")
                    }
                    start = rvda - UInt64(hostAddress)
                } else {
                    start = rvda
                }
                guard size == Self.baseSize else {
                    throw fail("an extended VBT needs an 8 KiB OpRegion (it is shown at 0x2000); the size field says \(kib) KiB")
                }
                guard start >= UInt64(Self.baseSize), start <= UInt64(image.count), UInt64(rvds) <= UInt64(image.count) - start else {
                    throw fail("the extended VBT (RVDA 0x\(String(rvda, radix: 16)), RVDS \(rvds)) lies outside the \(image.count)-byte image")
                }
                ext = Int(start)..<(Int(start) + rvds)
            }
        }
        extendedVBT = ext
        var v = Array(image[0..<(ext == nil ? size : Self.baseSize)])
        if let ext {
            if hostVersion == 0x0200 { v.setLE16(0x0201, at: Self.versionOffset) }
            v.setLE64(UInt64(Self.baseSize), at: Self.rvdaOffset)
            v += image[ext]
        } else {
            v.setLE64(0, at: Self.rvdaOffset)  // the kernel shows RVDA 0 without an extended VBT
        }
        view = v
    }

    /// Options of the generated default image.
    public struct Generated: Sendable, Equatable {
        /// 0x0200 (2.0: RVDA absolute) or 0x0201 and later (RVDA relative).
        public var version: UInt16 = 0x0201
        /// MBOX: ACPI, SWSCI and ASLE.
        public var mailboxes: UInt32 = OpRegion.mailboxACPI | OpRegion.mailboxSWSCI | OpRegion.mailboxASLE
        /// VBT bytes (a valid header, then zeros); above 6 KiB it goes to the extended area.
        public var vbtSize = 0x400
        /// Put the VBT in the extended area even if it fits in mailbox 4.
        public var extendedVBT = false
        /// The VBT's signature text.
        public var vbtName = "SWIFT-VFIO-USER"
        /// Version 2.1, ACPI/SWSCI/ASLE, a 1 KiB VBT in mailbox 4.
        public init() {}

        /// Whether the VBT goes to the extended area.
        public var usesExtendedVBT: Bool { extendedVBT || vbtSize > OpRegion.vbtMailboxSize }
    }

    /// A default OpRegion image as firmware would leave it at `hostAddress`: the
    /// header, mailboxes 1-3 zeroed apart from RVDA/RVDS, and the VBT either in
    /// mailbox 4 or right after the 8 KiB (RVDA = 0x2000, or ASLS + 0x2000 for 2.0).
    public static func generate(_ g: Generated, hostAddress: UInt32) -> [UInt8] {
        var img = [UInt8](repeating: 0, count: baseSize)
        img.replaceSubrange(0..<16, with: signature)
        img.setLE32(UInt32(baseSize / 1024), at: sizeOffset)
        img.setLE16(g.version, at: versionOffset)       // OVER: minor at 0x16, major at 0x17
        put(Array("swift-vfio-user".utf8), at: 0x18, max: 32, into: &img)   // SVER
        put(Array("generated".utf8), at: 0x38, max: 16, into: &img)         // VVER
        img.setLE32(g.mailboxes, at: mailboxesOffset)
        let vbt = makeVBT(size: g.vbtSize, name: g.vbtName)
        if g.usesExtendedVBT {
            let rvda = g.version == 0x0200 ? UInt64(hostAddress) + UInt64(baseSize) : UInt64(baseSize)
            img.setLE64(rvda, at: rvdaOffset)
            img.setLE32(UInt32(vbt.count), at: rvdsOffset)
            img += vbt
        } else {
            img.replaceSubrange(vbtOffset..<(vbtOffset + vbt.count), with: vbt)
        }
        return img
    }

    /// A minimal VBT: the 48-byte `vbt_header` ("$VBT" signature, version, sizes,
    /// checksum, BDB offset), a 22-byte BDB header ("BIOS_DATA_BLOCK "), zeros.
    /// The bytes sum to 0 mod 256, as the checksum field intends.
    public static func makeVBT(size: Int, name: String) -> [UInt8] {
        let n = max(0x30 + 22, min(size, 0xFFFF))
        var v = [UInt8](repeating: 0, count: n)
        put(Array(("$VBT " + name).utf8), at: 0, max: 20, pad: 0x20, into: &v)
        v.setLE16(100, at: 20)                 // version
        v.setLE16(0x30, at: 22)                // header size
        v.setLE16(UInt16(n), at: 24)           // VBT size
        v.setLE32(0x30, at: 28)                // BDB offset
        put(Array("BIOS_DATA_BLOCK ".utf8), at: 0x30, max: 16, into: &v)
        v.setLE16(230, at: 0x40)               // BDB version
        v.setLE16(22, at: 0x42)                // BDB header size
        v.setLE16(UInt16(n - 0x30), at: 0x44)  // BDB size
        let sum = v.reduce(UInt8(0)) { $0 &+ $1 }
        v[26] = 0 &- sum
        return v
    }

    private static func put(_ s: [UInt8], at o: Int, max: Int, pad: UInt8 = 0, into b: inout [UInt8]) {
        for i in 0..<max { b[o + i] = i < s.count ? s[i] : pad }
    }
}
