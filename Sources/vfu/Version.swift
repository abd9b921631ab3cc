/// The release this build is (`vfu --version`), and the vfio-user protocol version it speaks.
enum VFUVersion {
    static let release = "0.1.0"
    static let protocolVersion = "0.1"
    static var line: String { "vfu \(release) (vfio-user protocol \(protocolVersion))" }
}
