import CoreML
import CryptoKit
import Foundation
import OmniCoderCore

/// Compiles a bundle's Core ML package once and keeps the compiled .mlmodelc under Application Support/compiled,
/// named by the package's checksums in the manifest, so later launches (and the second function of a `--kv stream`
/// package) load it without compiling again. Call it off the main thread: compiling takes seconds.
enum CompiledModelCache {
    static func directory() throws -> URL {
        let support = try FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let dir = support.appendingPathComponent("compiled", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var values = URLResourceValues()
        values.isExcludedFromBackup = true  // derived data: never uploaded to iCloud backups
        var url = dir
        try? url.setResourceValues(values)
        return dir
    }

    /// A key from the sha256 of every manifest file of the package (a directory) or of the file itself.
    static func key(for file: String, in bundle: OmniCoderCore.Bundle) -> String {
        let entries = bundle.manifest.files.filter { $0.key == file || $0.key.hasPrefix(file + "/") }
            .sorted { $0.key < $1.key }
            .map { "\($0.key):\($0.value.sha256)" }
            .joined(separator: "\n")
        return SHA256.hash(data: Data(entries.utf8)).prefix(12).map { String(format: "%02x", $0) }.joined()
    }

    /// The compiled model of `file`: from the cache, else compiled now and moved into the cache atomically.
    static func compiled(_ file: String, in bundle: OmniCoderCore.Bundle) throws -> URL {
        let fm = FileManager.default
        let stem = (file as NSString).deletingPathExtension.replacingOccurrences(of: "/", with: "_")
        let dir = try directory()
        let target = dir.appendingPathComponent("\(stem)-\(key(for: file, in: bundle)).mlmodelc")
        if fm.fileExists(atPath: target.path) { return target }
        let fresh = try MLModel.compileModel(at: try bundle.file(file))  // in a temporary directory
        for old in (try? fm.contentsOfDirectory(atPath: dir.path)) ?? [] where old.hasPrefix(stem + "-") {
            try? fm.removeItem(at: dir.appendingPathComponent(old))  // models of bundles replaced since
        }
        do {
            try fm.moveItem(at: fresh, to: target)
        } catch where fm.fileExists(atPath: target.path) {
            try? fm.removeItem(at: fresh)  // another load put it there first
        }
        return target
    }
}
