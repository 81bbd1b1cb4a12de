import Foundation

/// Why a bundle was rejected; the same kinds as tests/vectors/bundles.json.
public enum BundleErrorKind: String, Sendable {
    case notFound = "not_found", invalid, format, version, path, missing, size, checksum, unlisted, target
}

public struct BundleError: Error, CustomStringConvertible {
    public let kind: BundleErrorKind
    public let message: String
    public var description: String { message }

    /// Public so that the app module (OmniCoderChat) can report model errors with it too.
    public init(kind: BundleErrorKind, message: String) {
        self.kind = kind
        self.message = message
    }
}

public struct FileEntry: Equatable, Sendable {
    public let sha256: String
    public let bytes: Int
}

/// The manifest's `model` section (what the runtime needs of it).
public struct ModelInfo: Sendable {
    public let name: String
    public let attention: String
    public let nLayers: Int
    public let vocabSize: Int
    public let contextLength: Int
    public let bosId: Int
    public let eosId: Int
    public let padId: Int
}

/// A parsed manifest.json (docs/bundle.md); `json` keeps the whole document for target-specific sections.
public struct Manifest {
    public let json: [String: Any]
    public let target: String
    public let model: ModelInfo
    public let graph: [String: Any]
    public let graphFile: String
    public let kv: [String: Any]
    public let tokenizerFile: String
    public let tokenizerType: String
    public let tokenizerAddBos: Bool
    public let stopIds: [Int]
    /// The chat template's role pieces (`tokenizer.chat_format`), nil without a template the exporter described.
    public let chatFormat: ChatFormat?
    public let sidecars: [String: String]
    public let files: [String: FileEntry]

    public init(json: [String: Any]) throws {
        func bad(_ what: String) -> BundleError {
            BundleError(kind: .invalid, message: "manifest.json is invalid at \(what); re-export the bundle")
        }
        guard let target = json["target"] as? String else { throw bad("target") }
        guard let m = json["model"] as? [String: Any] else { throw bad("model") }
        func int(_ key: String) throws -> Int {
            guard let v = m[key] as? Int else { throw bad("model/\(key)") }
            return v
        }
        model = ModelInfo(
            name: m["name"] as? String ?? "", attention: m["attention"] as? String ?? "",
            nLayers: try int("n_layers"), vocabSize: try int("vocab_size"), contextLength: try int("context_length"),
            bosId: try int("bos_id"), eosId: try int("eos_id"), padId: try int("pad_id"))
        guard let graph = json["graph"] as? [String: Any], let file = graph["file"] as? String,
            let kv = graph["kv"] as? [String: Any]
        else { throw bad("graph") }
        guard let tok = json["tokenizer"] as? [String: Any], let tokFile = tok["file"] as? String,
            let tokType = tok["type"] as? String
        else { throw bad("tokenizer") }
        guard let side = json["sidecars"] as? [String: String] else { throw bad("sidecars") }
        guard let listed = json["files"] as? [String: Any], !listed.isEmpty else { throw bad("files") }
        var files: [String: FileEntry] = [:]
        for (name, value) in listed {
            guard let entry = value as? [String: Any], let sha = entry["sha256"] as? String,
                let bytes = entry["bytes"] as? Int, sha.count == 64,
                sha.allSatisfy({ "0123456789abcdef".contains($0) })
            else { throw bad("files/\(name)") }
            files[name] = FileEntry(sha256: sha, bytes: bytes)
        }
        self.json = json
        self.target = target
        self.graph = graph
        self.graphFile = file
        self.kv = kv
        self.tokenizerFile = tokFile
        self.tokenizerType = tokType
        self.tokenizerAddBos = tok["add_bos"] as? Bool ?? true
        self.stopIds = tok["stop_ids"] as? [Int] ?? [model.eosId]
        self.chatFormat = try ChatFormat.from(json: tok["chat_format"])
        self.sidecars = side
        self.files = files
    }
}

/// A verified bundle directory.
public struct Bundle {
    public let root: URL
    public let manifest: Manifest

    public func file(_ name: String) throws -> URL { try BundleReader.safeMember(root, name) }

    public func sidecar(_ kind: String) throws -> [String: Any]? {
        guard let name = manifest.sidecars[kind] else { return nil }
        let data = try Data(contentsOf: try file(name))
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BundleError(kind: .invalid, message: "\(name) is not valid JSON; re-export the bundle")
        }
        return object
    }

    public static let hfType = "huggingface"

    /// Prompt ids for each chat turn: the bundle's chat format over its tokenizer (plain text without one).
    public func prompter() throws -> ChatPrompter { ChatPrompter(tokenizer: try tokenizer(), format: manifest.chatFormat) }

    /// The bundle's tokenizer: omnicoder-byte, or a Hugging Face tokenizer.json (byte-level BPE, HfTokenizer).
    public func tokenizer() throws -> any TextTokenizer {
        let name = manifest.tokenizerFile
        let m = manifest.model
        let tok: any TextTokenizer
        switch manifest.tokenizerType {
        case ByteTokenizer.type: tok = try ByteTokenizer.fromJSON(Data(contentsOf: try file(name)))
        case Bundle.hfType:
            do {
                let hf = try HfTokenizer(json: Data(contentsOf: try file(name)))
                tok = BundleHfTokenizer(
                    hf: hf, bosId: m.bosId, eosId: m.eosId, addsBos: manifest.tokenizerAddBos, stopIds: manifest.stopIds)
            } catch let error as TokenizerError {
                throw BundleError(kind: .invalid, message: "bundle tokenizer \(name) cannot be used: \(error.message)")
            }
        default:
            throw BundleError(
                kind: .invalid,
                message: "tokenizer type \(manifest.tokenizerType) is not supported (the app reads "
                    + "\(ByteTokenizer.type) and \(Bundle.hfType))")
        }
        if tok.vocabSize > m.vocabSize {
            throw BundleError(
                kind: .invalid,
                message: "bundle tokenizer \(name) has \(tok.vocabSize) tokens, more than model.vocab_size "
                    + "\(m.vocabSize); re-export the bundle")
        }
        return tok
    }

    public func kvLayout() throws -> KvLayout { try KvLayout(kv: manifest.kv, nLayers: manifest.model.nLayers) }

    /// Throws `.target` unless the bundle was exported for `target` (coreml for iOS, onnx for Android).
    @discardableResult
    public func requireTarget(_ target: String) throws -> Bundle {
        guard manifest.target == target else {
            throw BundleError(
                kind: .target,
                message: "this is a \(manifest.target) bundle; this app needs a \(target) bundle "
                    + "(omnicoder-export --target \(target))")
        }
        return self
    }
}

/// Reads and checks a bundle like runtimes/bundle.py: format, version, contained paths, sizes and sha256.
public enum BundleReader {
    public static let format = "omnicoder-bundle"
    public static let formatVersion = 1
    public static let manifestName = "manifest.json"

    /// Resolve a manifest path inside the bundle; reject absolute paths and paths that leave it.
    public static func safeMember(_ root: URL, _ name: String) throws -> URL {
        let leaves = BundleError(kind: .path, message: "bundle file path '\(name)' leaves the bundle; re-export the bundle")
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        if name.trimmingCharacters(in: .whitespaces).isEmpty || name.hasPrefix("/") || name.contains("\\")
            || parts.contains("..")
        {
            throw leaves
        }
        let base = root.standardizedFileURL.resolvingSymlinksInPath()
        let member = base.appendingPathComponent(name).standardizedFileURL.resolvingSymlinksInPath()
        guard member.path.hasPrefix(base.path + "/") else { throw leaves }
        return member
    }

    /// Open `root`; with `verify` every file's size and sha256 is checked before anything is used.
    public static func open(_ root: URL, verify: Bool = true, onFile: ((String) -> Void)? = nil) throws -> Bundle {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
            throw BundleError(kind: .notFound, message: "bundle \(root.path) does not exist")
        }
        let manifestURL = root.appendingPathComponent(manifestName)
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw BundleError(kind: .notFound, message: "\(root.path) has no \(manifestName); it is not an OmniCoder bundle")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BundleError(kind: .invalid, message: "\(manifestName) is not valid JSON; re-export the bundle")
        }
        guard json["format"] as? String == format else {
            throw BundleError(kind: .format, message: "\(manifestName) is not an OmniCoder bundle manifest")
        }
        guard let version = json["format_version"] as? Int, version == formatVersion else {
            throw BundleError(
                kind: .version,
                message: "bundle format version \(json["format_version"] ?? "none") is not supported "
                    + "(this app reads \(formatVersion)); re-export the bundle")
        }
        let manifest = try Manifest(json: json)
        for name in manifest.files.keys.sorted() {
            let entry = manifest.files[name]!
            let member = try safeMember(root, name)
            var memberIsDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: member.path, isDirectory: &memberIsDir), !memberIsDir.boolValue
            else {
                throw BundleError(kind: .missing, message: "bundle file \(name) is missing; re-copy the bundle")
            }
            guard verify else { continue }
            onFile?(name)
            let size = (try FileManager.default.attributesOfItem(atPath: member.path)[.size] as? NSNumber)?.intValue ?? -1
            guard size == entry.bytes else {
                throw BundleError(kind: .size, message: "bundle file \(name) has \(size) bytes, the manifest says \(entry.bytes)")
            }
            guard try FileDigest.sha256Hex(of: member) == entry.sha256 else {
                throw BundleError(kind: .checksum, message: "checksum mismatch for bundle file \(name): corrupt or modified")
            }
        }
        for name in [manifest.graphFile, manifest.tokenizerFile] + manifest.sidecars.values.sorted()
        where manifest.files[name] == nil && !manifest.files.keys.contains(where: { $0.hasPrefix(name + "/") }) {
            throw BundleError(kind: .unlisted, message: "\(manifestName) refers to \(name), which is not in its file list")
        }
        let bundle = Bundle(root: root, manifest: manifest)
        for kind in manifest.sidecars.keys { _ = try bundle.sidecar(kind) }
        return bundle
    }
}
