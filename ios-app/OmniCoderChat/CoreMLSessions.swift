import CoreML
import Foundation
import OmniCoderCore

/// The Core ML bundle's decode step behind the core's ModelSession (docs/coreml.md, export/coreml_export.py).
enum CoreMLSessionFactory {
    static func make(bundle: OmniCoderCore.Bundle, policy: PagingPolicy) throws -> ModelSession {
        try bundle.requireTarget("coreml")
        let coreml = bundle.manifest.graph["coreml"] as? [String: Any] ?? [:]
        if coreml["kv_mode"] as? String == "stream" {
            return try StreamingSession(bundle: bundle, policy: policy)
        }
        guard #available(iOS 18.0, macOS 15.0, *) else {
            throw BundleError(kind: .invalid, message: "a --kv state bundle needs iOS 18; export with --kv stream for iOS 17")
        }
        let compiled = try MLModel.compileModel(at: try bundle.file(bundle.manifest.graphFile))
        return try StatefulSession(bundle: bundle, compiled: compiled, capacity: coreml["max_seq_len"] as? Int)
    }

    /// Load function `name` per `graph.coreml.packages` ({name: {file, function}}): iOS 18 bundles keep both
    /// functions in one multifunction model.mlpackage, iOS 17 bundles put `prefill` in a package of its own.
    static func load(_ name: String, bundle: OmniCoderCore.Bundle) throws -> MLModel {
        let coreml = bundle.manifest.graph["coreml"] as? [String: Any] ?? [:]
        let entry = (coreml["packages"] as? [String: Any])?[name] as? [String: Any]
        let file = entry?["file"] as? String ?? bundle.manifest.graphFile
        let config = MLModelConfiguration()
        config.computeUnits = .all
        if let function = entry?["function"] as? String, #available(iOS 18.0, macOS 15.0, *) {
            config.functionName = function
        }
        return try MLModel(contentsOf: try MLModel.compileModel(at: try bundle.file(file)), configuration: config)
    }
}

/// `--kv state` (iOS 18): inputIds [1, T] + causalMask [1, 1, T, end] -> logits; KV in the states keyCache /
/// valueCache, slot = absolute position. No eviction: the context is the export's --max-seq-len.
@available(iOS 18.0, macOS 15.0, *)
final class StatefulSession: ModelSession {
    private let model: MLModel
    private var state: MLState
    let contextLength: Int
    private(set) var cacheLength = 0

    init(bundle: OmniCoderCore.Bundle, compiled: URL, capacity: Int?) throws {
        let config = MLModelConfiguration()
        config.computeUnits = .all
        model = try MLModel(contentsOf: compiled, configuration: config)
        state = model.makeState()
        contextLength = capacity ?? bundle.manifest.model.contextLength
    }

    func reset() {
        state = model.makeState()
        cacheLength = 0
    }

    func step(ids: [Int], positions: [Int]) throws -> [Float] {
        precondition(positions.first == cacheLength, "the stateful model writes slot = position; no eviction")
        let t = ids.count
        let end = cacheLength + t
        let inputIds = try MLMultiArray(shape: [1, NSNumber(value: t)], dataType: .int32)
        for (i, id) in ids.enumerated() { inputIds[i] = NSNumber(value: id) }
        let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: t), NSNumber(value: end)], dataType: .float16)
        mask.withUnsafeMutableBytes { raw, _ in raw.initializeMemory(as: UInt8.self, repeating: 0) }  // in-graph causal rule
        let inputs = try MLDictionaryFeatureProvider(dictionary: ["inputIds": inputIds, "causalMask": mask])
        let out = try model.prediction(from: inputs, using: state)
        cacheLength = end
        return try lastRow(out.featureValue(for: "logits")?.multiArrayValue)
    }
}

/// `--kv stream` (iOS 17+): `prefill` (no past) and `decode` functions with explicit KV in/out (fp16), the ONNX
/// contract with Core ML-safe names; the KV rows live in the core's PagedKvStore (window + sinks from the sidecar).
final class StreamingSession: ModelSession {
    private let prefill: MLModel
    private let decode: MLModel
    private let layout: KvLayout
    let store: PagedKvStore
    private let policy: PagingPolicy
    private let modelContext: Int

    init(bundle: OmniCoderCore.Bundle, policy: PagingPolicy) throws {
        prefill = try CoreMLSessionFactory.load("prefill", bundle: bundle)
        decode = try CoreMLSessionFactory.load("decode", bundle: bundle)
        layout = try KvLayout(kv: bundle.manifest.kv, nLayers: bundle.manifest.model.nLayers, storageDtype: "float16")
        store = PagedKvStore(layout: layout, policy: policy)
        self.policy = policy
        modelContext = (bundle.manifest.graph["coreml"] as? [String: Any])?["max_seq_len"] as? Int
            ?? bundle.manifest.model.contextLength
    }

    var contextLength: Int { policy.window > 0 ? Int.max : modelContext }
    var cacheLength: Int { store.length }

    func reset() { store.reset() }

    func step(ids: [Int], positions: [Int]) throws -> [Float] {
        let chunk = policy.window > 0 ? policy.pageLen : ids.count
        var logits: [Float] = []
        var start = 0
        while start < ids.count {
            let end = min(ids.count, start + chunk)
            logits = try run(Array(ids[start..<end]), Array(positions[start..<end]))
            start = end
        }
        return logits
    }

    private func run(_ ids: [Int], _ positions: [Int]) throws -> [Float] {
        let t = NSNumber(value: ids.count)
        let inputIds = try MLMultiArray(shape: [1, t], dataType: .int32)
        let positionIds = try MLMultiArray(shape: [1, t], dataType: .int32)
        for i in ids.indices {
            inputIds[i] = NSNumber(value: ids[i])
            positionIds[i] = NSNumber(value: positions[i])
        }
        var features: [String: Any] = ["input_ids": inputIds, "position_ids": positionIds]
        let feeds = store.feeds()
        let first = feeds.first?.value.shape[2] ?? 0
        if first > 0 {
            for (name, tensor) in feeds { features[name] = try multiArray(tensor) }
        }
        let model = first > 0 ? decode : prefill
        let out = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        var presents: [String: KvTensor] = [:]
        for (present, past) in zip(layout.outputs, layout.inputs) {
            guard let array = out.featureValue(for: present)?.multiArrayValue else {
                throw BundleError(kind: .invalid, message: "the model did not return \(present)")
            }
            presents[past] = KvTensor(name: past, dtype: "float16", shape: array.shape.map(\.intValue), data: contiguousBytes(array))
        }
        store.update(presents, newTokens: ids.count)
        return try lastRow(out.featureValue(for: "logits")?.multiArrayValue)
    }

    private func multiArray(_ tensor: KvTensor) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: tensor.shape.map { NSNumber(value: $0) }, dataType: .float16)
        array.withUnsafeMutableBytes { raw, _ in tensor.data.withUnsafeBytes { raw.copyMemory(from: $0) } }
        return array
    }
}

/// The bytes of a float16 MLMultiArray in row-major order (output arrays may be strided).
func contiguousBytes(_ array: MLMultiArray) -> [UInt8] {
    let shape = array.shape.map(\.intValue)
    let strides = array.strides.map(\.intValue)
    var out = [UInt16](repeating: 0, count: shape.reduce(1, *))
    array.withUnsafeBufferPointer(ofType: UInt16.self) { src in
        var index = [Int](repeating: 0, count: shape.count)
        for flat in out.indices {
            var offset = 0
            for d in shape.indices { offset += index[d] * strides[d] }
            out[flat] = src[offset]
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
    }
    return out.withUnsafeBytes { Array($0) }
}

/// The last position's logits [V] of a [1, T, V] output (fp16 or fp32).
func lastRow(_ array: MLMultiArray?) throws -> [Float] {
    guard let array else { throw BundleError(kind: .invalid, message: "the model returned no logits") }
    let shape = array.shape.map(\.intValue)
    let strides = array.strides.map(\.intValue)
    let vocab = shape[2]
    let base = (shape[1] - 1) * strides[1]
    if array.dataType == .float16 {
        return array.withUnsafeBufferPointer(ofType: Float16.self) { p in (0..<vocab).map { Float(p[base + $0 * strides[2]]) } }
    }
    return array.withUnsafeBufferPointer(ofType: Float.self) { p in (0..<vocab).map { p[base + $0 * strides[2]] } }
}
