import Foundation
import OmniCoderCore

/// Finds the bundle: Application Support/bundle (a bundle copied in with the Files app or Xcode's device
/// container) wins; else Resources/bundle inside the app (put there by `omnicoder-package-app-assets`).
enum BundleLocator {
    static func candidates() -> [URL] {
        var urls: [URL] = []
        if let support = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask).first {
            urls.append(support.appendingPathComponent("bundle"))
        }
        if let resources = Foundation.Bundle.main.resourceURL {
            urls.append(resources.appendingPathComponent("Resources/bundle"))  // the Resources folder reference
            urls.append(resources.appendingPathComponent("bundle"))
        }
        return urls
    }

    /// The first candidate with a manifest, verified (sizes + sha256) and checked to be a Core ML bundle.
    static func verifiedBundle() throws -> OmniCoderCore.Bundle {
        for url in candidates() where FileManager.default.fileExists(atPath: url.appendingPathComponent("manifest.json").path) {
            return try BundleReader.open(url).requireTarget("coreml")
        }
        throw BundleError(
            kind: .notFound,
            message: "no bundle in the app: run omnicoder-package-app-assets --bundle DIR and rebuild")
    }
}
