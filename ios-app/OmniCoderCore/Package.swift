// swift-tools-version:5.9
// The iOS app's platform-free core: bundle verification, byte tokenizer, sampling, KV paging, decode loop.
// `swift test` runs it against tests/vectors/ (docs/apps.md); the app target (OmniCoderChat) depends on it.
// SHA-256 comes from CryptoKit on Apple platforms and, on Linux (where the tests run), from OpenSSL's libcrypto
// (CLibCrypto, Debian libssl-dev). swift-crypto's `Crypto` would serve both, but SwiftPM can only fetch it from
// GitHub, which the CI machines cannot reach, and no Debian package ships it.
import PackageDescription

let package = Package(
    name: "OmniCoderCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "OmniCoderCore", targets: ["OmniCoderCore"])],
    targets: [
        .systemLibrary(name: "CLibCrypto", providers: [.apt(["libssl-dev"])]),
        .target(
            name: "OmniCoderCore",
            dependencies: [.target(name: "CLibCrypto", condition: .when(platforms: [.linux]))]
        ),
        .testTarget(name: "OmniCoderCoreTests", dependencies: ["OmniCoderCore"]),
    ]
)
