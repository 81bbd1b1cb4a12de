import Foundation
import OmniCoderCore

/// The bundles the app can run: the one built into the app (Resources/bundle, put there by
/// `omnicoder-package-app-assets`), and bundles imported from Files into Application Support/bundles/NAME (a
/// bundle copied to Application Support/bundle with Xcode's device container also counts, as the built-in name).
/// Every bundle is verified (sizes + sha256) and checked to be a Core ML bundle before it is used.
enum BundleLocator {
    static let builtInName = "bundle"

    static func importedRoot() throws -> URL {
        let support = try FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let root = support.appendingPathComponent("bundles", isDirectory: true)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        return root
    }

    private static func hasManifest(_ url: URL) -> Bool {
        FileManager.default.fileExists(atPath: url.appendingPathComponent("manifest.json").path)
    }

    /// Where the built-in bundle may be, first match wins.
    static func builtInCandidates() -> [URL] {
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

    /// Names of the bundles present (imported ones, and the built-in one when there is one).
    static func names() -> [String] {
        var names: [String] = []
        if builtInCandidates().contains(where: hasManifest) { names.append(builtInName) }
        if let root = try? importedRoot(), let children = try? FileManager.default.contentsOfDirectory(atPath: root.path) {
            names += children.filter { hasManifest(root.appendingPathComponent($0)) && $0 != builtInName }.sorted()
        }
        return names
    }

    static func url(of name: String) throws -> URL {
        if name == builtInName, let url = builtInCandidates().first(where: hasManifest) { return url }
        let url = try importedRoot().appendingPathComponent(name)
        guard hasManifest(url) else {
            throw BundleError(
                kind: .notFound,
                message: name == builtInName
                    ? "no bundle in the app: run omnicoder-package-app-assets --bundle DIR and rebuild, or import one"
                    : "bundle \(name) is not installed; import it on the Models tab")
        }
        return url
    }

    /// The bundle `name`, verified (sizes + sha256) and checked to be a Core ML bundle.
    static func verifiedBundle(named name: String) throws -> OmniCoderCore.Bundle {
        try BundleReader.open(try url(of: name)).requireTarget("coreml")
    }

    /// Copy a folder picked in Files into Application Support/bundles/NAME, verify the copy, return NAME.
    static func importFolder(_ picked: URL) throws -> String {
        let scoped = picked.startAccessingSecurityScopedResource()
        defer { if scoped { picked.stopAccessingSecurityScopedResource() } }
        let fm = FileManager.default
        let name = picked.lastPathComponent.replacingOccurrences(of: "/", with: "_")
        let root = try importedRoot()
        let tmp = root.appendingPathComponent(".\(name).tmp")
        try? fm.removeItem(at: tmp)
        try fm.copyItem(at: picked, to: tmp)
        do {
            _ = try BundleReader.open(tmp).requireTarget("coreml")
        } catch {
            try? fm.removeItem(at: tmp)
            throw error
        }
        let target = root.appendingPathComponent(name)
        try? fm.removeItem(at: target)
        try fm.moveItem(at: tmp, to: target)
        return name
    }
}
