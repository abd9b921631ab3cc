// swift-tools-version: 6.1
// swift-vfio-user: a vfio-user device server, client library and conformance suite.
//
// Layers, imported strictly downward:
//   CVFIOUserShim      C shim for what Glibc does not import (eventfd, memfd, CMSG, splice)
//   CXXHash            the checksum loops (XXH64 stripes, XXH3 with AVX2), pure C
//   MigrationStream    the migration stream's record framing, loader and checksums
//   VFIOUserProtocol   wire format: pure values and codecs, no I/O
//   VFIOUserTransport  Unix sockets, SCM_RIGHTS, eventfd, memfd, mmap
//   PCICore            the vfio-pci-core equivalent: config space, regions, IRQs, DMA, reset, migration
//   VFIOUserServer     connection lifecycle and message dispatcher
//   DeviceSpecs        JSON device descriptions and their validation
//   VFIOUserControl    the control plane: a JSON socket to poke, watch and fault a served device
//   VariantDevices     IGD, NVLink2, Grace, migratable VF, ...: built on PCICore's public API only
//   VFIOUserClient     client library (the VMM side)
//   VFIOUserConformance protocol conformance checks against any vfio-user server
//   VFIOUserCapture    pcapng captures and the protocol validator: pure, no I/O
//   VFIOUserProxy      the transparent proxy, capture files, message recording, replay
//   vfu                the command-line tool
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

// Linux only: the transport, the core and the server use Glibc, eventfd, memfd and
// SCM_RIGHTS directly (there is no Linux entry for `platforms`, so none is given).
let package = Package(
    name: "swift-vfio-user",
    products: [
        .executable(name: "vfu", targets: ["vfu"]),
        .library(name: "VFIOUserProtocol", targets: ["VFIOUserProtocol"]),
        .library(name: "VFIOUserClient", targets: ["VFIOUserClient"]),
        .library(name: "VFIOUserServer", targets: ["VFIOUserServer"]),
        .library(name: "PCICore", targets: ["PCICore"]),
        // What a device author outside this package needs (examples/TemperatureSensor):
        // specs, the variant API, and sockets/fds/eventfds to serve a device.
        .library(name: "DeviceSpecs", targets: ["DeviceSpecs"]),
        .library(name: "VariantDevices", targets: ["VariantDevices"]),
        .library(name: "VFIOUserTransport", targets: ["VFIOUserTransport"]),
        .library(name: "VFIOUserConformance", targets: ["VFIOUserConformance"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .target(name: "CVFIOUserShim"),
        .target(name: "CXXHash"),
        .target(name: "MigrationStream", dependencies: ["CXXHash", "VFIOUserProtocol"], swiftSettings: strict),
        .target(name: "VFIOUserProtocol", swiftSettings: strict),
        .target(
            name: "VFIOUserTransport",
            dependencies: ["CVFIOUserShim", "VFIOUserProtocol"],
            swiftSettings: strict),
        .target(
            name: "PCICore",
            dependencies: ["VFIOUserProtocol", "VFIOUserTransport"],
            swiftSettings: strict),
        .target(
            name: "VFIOUserServer",
            dependencies: [
                "VFIOUserProtocol", "VFIOUserTransport", "PCICore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "DeviceSpecs",
            dependencies: ["PCICore"],
            swiftSettings: strict),
        .target(
            name: "VariantDevices",
            dependencies: ["PCICore", "DeviceSpecs", "VFIOUserProtocol", "VFIOUserTransport", "MigrationStream"],
            swiftSettings: strict),
        .target(
            name: "VFIOUserControl",
            dependencies: ["VFIOUserProtocol", "VFIOUserTransport", "PCICore", "VFIOUserServer", "DeviceSpecs",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "VFIOUserClient",
            dependencies: ["VFIOUserProtocol", "VFIOUserTransport"],
            swiftSettings: strict),
        .target(
            name: "VFIOUserConformance",
            dependencies: ["VFIOUserClient", "VFIOUserProtocol", "VFIOUserTransport"],
            swiftSettings: strict),
        .target(name: "VFIOUserCapture", dependencies: ["VFIOUserProtocol"], swiftSettings: strict),
        .target(
            name: "VFIOUserProxy",
            dependencies: ["CVFIOUserShim", "VFIOUserProtocol", "VFIOUserTransport", "VFIOUserCapture",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .executableTarget(
            name: "vfu",
            dependencies: [
                "VFIOUserProtocol", "VFIOUserTransport", "PCICore", "VFIOUserServer",
                "DeviceSpecs", "VariantDevices", "VFIOUserClient", "VFIOUserConformance", "VFIOUserControl",
                "VFIOUserCapture", "VFIOUserProxy", "MigrationStream",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // examples/TemperatureSensor is a package of its own that depends on this one by
        // path (scripts/test.sh builds and tests it), so it can only use the products above.

        // Shared by the test targets only: a seeded generator, TestFailure, the repository root.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "VFIOUserProtocolTests", dependencies: ["VFIOUserProtocol", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "VFIOUserTransportTests", dependencies: ["VFIOUserTransport", "VFIOUserProtocol", "CVFIOUserShim"], swiftSettings: strict),
        .testTarget(name: "PCICoreTests", dependencies: ["PCICore", "VFIOUserProtocol"], swiftSettings: strict),
        .testTarget(name: "PCICoreIntegrationTests", dependencies: ["PCICore", "VFIOUserServer", "VFIOUserClient", "VFIOUserTransport", "VFIOUserProtocol", "DeviceSpecs", "VariantDevices", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "VFIOUserServerTests",
            dependencies: ["VFIOUserServer", "VFIOUserClient", "DeviceSpecs", "VariantDevices", "PCICore", "VFIOUserTransport", "VFIOUserProtocol", "TestSupport",
                           "VFIOUserProxy", "VFIOUserCapture", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .testTarget(
            name: "VFIOUserConformanceTests",
            dependencies: ["VFIOUserConformance", "VFIOUserServer", "VFIOUserClient", "VariantDevices",
                           "VFIOUserTransport", "VFIOUserProtocol", "TestSupport"],
            swiftSettings: strict),
        .testTarget(name: "MigrationTests", dependencies: ["CXXHash", "MigrationStream", "PCICore", "VFIOUserServer", "VFIOUserClient", "VFIOUserTransport", "VFIOUserProtocol", "DeviceSpecs", "VariantDevices"], swiftSettings: strict),
        .testTarget(name: "VFIOUserClientTests", dependencies: ["VFIOUserClient", "VFIOUserProtocol", "VFIOUserTransport", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "VFIOUserCaptureTests", dependencies: ["VFIOUserCapture", "VFIOUserProtocol"], swiftSettings: strict),
        .testTarget(
            name: "VFIOUserControlTests",
            dependencies: ["VFIOUserControl", "VFIOUserServer", "VFIOUserClient", "VariantDevices", "DeviceSpecs", "PCICore",
                           "VFIOUserTransport", "VFIOUserProtocol", "TestSupport"],
            swiftSettings: strict),
        .testTarget(name: "DeviceSpecsTests", dependencies: ["DeviceSpecs", "PCICore", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "VariantDevicesTests",
            dependencies: ["VariantDevices", "DeviceSpecs", "PCICore", "VFIOUserServer", "VFIOUserClient", "VFIOUserProtocol", "VFIOUserTransport"],
            swiftSettings: strict),
    ]
)
