// swift-tools-version:5.9
// The iOS app's platform-free core: bundle verification, byte tokenizer, sampling, KV paging, decode loop.
// `swift test` runs it against tests/vectors/ (docs/apps.md); the app target (OmniCoderChat) depends on it.
import PackageDescription

let package = Package(
    name: "OmniCoderCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "OmniCoderCore", targets: ["OmniCoderCore"])],
    targets: [
        .target(name: "OmniCoderCore"),
        .testTarget(name: "OmniCoderCoreTests", dependencies: ["OmniCoderCore"]),
    ]
)
