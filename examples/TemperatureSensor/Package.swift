// swift-tools-version: 6.1
// An example device package built outside swift-vfio-user, only against its library
// products: the way a device author starts. Copy this folder, rename, and point the
// dependency at a release (`.package(url: "https://github.com/...", from: "0.1.0")`).
import PackageDescription

let package = Package(
    name: "TemperatureSensor",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TemperatureSensor", targets: ["TemperatureSensor"]),
        .executable(name: "temperature-sensor-server", targets: ["temperature-sensor-server"]),
    ],
    dependencies: [
        .package(name: "swift-vfio-user", path: "../.."),
    ],
    targets: [
        // The device: a variant driver and its register model.
        .target(
            name: "TemperatureSensor",
            dependencies: [
                .product(name: "PCICore", package: "swift-vfio-user"),
                .product(name: "DeviceSpecs", package: "swift-vfio-user"),
                .product(name: "VariantDevices", package: "swift-vfio-user"),
                .product(name: "VFIOUserProtocol", package: "swift-vfio-user"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // Serves it on a Unix socket, for QEMU or any vfio-user client.
        .executableTarget(
            name: "temperature-sensor-server",
            dependencies: [
                "TemperatureSensor",
                .product(name: "DeviceSpecs", package: "swift-vfio-user"),
                .product(name: "VariantDevices", package: "swift-vfio-user"),
                .product(name: "VFIOUserServer", package: "swift-vfio-user"),
                .product(name: "VFIOUserTransport", package: "swift-vfio-user"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // Drives the device over a real socket through the client library, as a VMM would.
        .testTarget(
            name: "TemperatureSensorTests",
            dependencies: [
                "TemperatureSensor",
                .product(name: "PCICore", package: "swift-vfio-user"),
                .product(name: "DeviceSpecs", package: "swift-vfio-user"),
                .product(name: "VariantDevices", package: "swift-vfio-user"),
                .product(name: "VFIOUserServer", package: "swift-vfio-user"),
                .product(name: "VFIOUserClient", package: "swift-vfio-user"),
                .product(name: "VFIOUserTransport", package: "swift-vfio-user"),
                .product(name: "VFIOUserProtocol", package: "swift-vfio-user"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]),
    ]
)
