import CoreML
import Foundation
import OmniCoderCore

/// The Core ML bundle's decode step behind the core's ModelSession (docs/coreml.md, export/coreml_export.py).
enum CoreMLSessionFactory {
    /// Drafts per verify call of the n-gram drafter (Conversation's maxDraft; Python's --speculative 8).
    static let maxDraft = 8

    /// The session and what the screen says about its KV store. `--kv stream` uses the bundle's retention sidecar when
    /// it has one (and the graph outputs `retention`), else pages; `--kv state` keeps the KV inside the model.
    static func make(bundle: OmniCoderCore.Bundle, policy: PagingPolicy, kvBudgetBytes: Int) throws -> (ModelSession, String) {
        try bundle.requireTarget("coreml")
        let coreml = bundle.manifest.graph["coreml"] as? [String: Any] ?? [:]
        let sidecar = try bundle.sidecar("retention")
        if coreml["kv_mode"] as? String == "stream" {
            let session = try StreamingSession(
                bundle: bundle, policy: policy, retentionSidecar: sidecar, kvBudgetBytes: kvBudgetBytes)
            return (session, session.kvNote)
        }
        guard #available(iOS 18.0, macOS 15.0, *) else {
            throw BundleError(kind: .invalid, message: "a --kv state bundle needs iOS 18; export with --kv stream for iOS 17")
        }
        let compiled = try CompiledModelCache.compiled(bundle.manifest.graphFile, in: bundle)
        let session = try StatefulSession(bundle: bundle, compiled: compiled, capacity: coreml["max_seq_len"] as? Int)
        let note = sidecar == nil ? "" : "retention sidecar ignored: --kv state keeps the KV in MLState, which cannot evict"
        return (session, note)
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
        // compiled once per bundle (both functions of an iOS 18 package share it), cached across launches
        return try MLModel(contentsOf: try CompiledModelCache.compiled(file, in: bundle), configuration: config)
    }
}

/// `--kv state` (iOS 18): inputIds [1, T] + causalMask [1, 1, T, end] -> logits; KV in the states keyCache /
/// valueCache, slot = absolute position. No eviction: the context is the export's --max-seq-len. Rolling back is
/// moving `cacheLength`: later calls overwrite the slots from there, and the mask's width (`end`) hides the rest.
@available(iOS 18.0, macOS 15.0, *)
final class StatefulSession: SpeculativeSession {
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
        try lastRow(try predict(ids: ids, positions: positions))
    }

    func verify(ids: [Int], positions: [Int]) throws -> [[Float]] {
        try logitRows(try predict(ids: ids, positions: positions))
    }

    func truncate(_ length: Int) {
        precondition(0 <= length && length <= cacheLength, "cannot truncate \(cacheLength) tokens to \(length)")
        cacheLength = length
    }

    private func predict(ids: [Int], positions: [Int]) throws -> MLMultiArray? {
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
        return out.featureValue(for: "logits")?.multiArrayValue
    }
}

/// `--kv stream` (iOS 17+): `prefill` (no past) and `decode` functions with explicit KV in/out (fp16), the ONNX
/// contract with Core ML-safe names. The KV rows live in the core: in a RetentionStore when the bundle has a retention
/// sidecar and the graph outputs `retention` (fp32 rows, as the sidecar's budget counts them, converted to and from
/// fp16 at the model; RetentionStore.chunk tokens per call), else in a PagedKvStore (window + sinks from the sidecar;
/// `maxDraft` tokens kept behind the window so that rejected drafts can be rolled back).
final class StreamingSession: SpeculativeSession {
    private let prefill: MLModel
    private let decode: MLModel
    private let layout: KvLayout
    let pages: PagedKvStore?
    let retention: RetentionStore?
    /// What the screen says about the KV store: retention and its budget, or why the sidecar was ignored.
    let kvNote: String
    private let policy: PagingPolicy
    private let modelContext: Int

    init(bundle: OmniCoderCore.Bundle, policy: PagingPolicy, retentionSidecar: [String: Any]?, kvBudgetBytes: Int) throws {
        let decode = try CoreMLSessionFactory.load("decode", bundle: bundle)
        let context = (bundle.manifest.graph["coreml"] as? [String: Any])?["max_seq_len"] as? Int
            ?? bundle.manifest.model.contextLength
        let hasOutput = decode.modelDescription.outputDescriptionsByName["retention"] != nil
        let layout = try KvLayout(kv: bundle.manifest.kv, nLayers: bundle.manifest.model.nLayers, storageDtype: "float16")
        let choice = try KvChoice.choose(
            sidecar: retentionSidecar, hasRetentionOutput: hasOutput, kvDtype: layout.kvDtype, deviceBudgetBytes: kvBudgetBytes)
        var note = choice.note
        var store: RetentionStore?
        if let wanted = choice.retention {
            let fp32 = try KvLayout(kv: bundle.manifest.kv, nLayers: bundle.manifest.model.nLayers)
            store = try RetentionStore(layout: fp32, policy: wanted)
            // past + new tokens must fit the export's --max-seq-len: hold at most that minus one call's chunk
            if let fitted = store?.policy(holdingAtMost: context - RetentionStore.chunk), fitted != wanted {
                store = try RetentionStore(layout: fp32, policy: fitted)
                let mb = Double(fitted.budgetBytes) / 1_048_576
                note += String(format: ", lowered to %.2f MB by --max-seq-len %d", mb, context)
            }
        }
        prefill = try CoreMLSessionFactory.load("prefill", bundle: bundle)
        self.decode = decode
        self.layout = layout
        self.policy = policy
        modelContext = context
        retention = store
        pages = store == nil ? PagedKvStore(layout: layout, policy: policy) : nil
        pages?.rollbackSlack = CoreMLSessionFactory.maxDraft
        kvNote = note
    }

    var contextLength: Int { retention != nil || policy.window > 0 ? Int.max : modelContext }
    var cacheLength: Int { retention?.length ?? pages?.length ?? 0 }
    /// Resident KV bytes: the retention store's (compressed tokens at their packed size) or the resident pages.
    func residentKvBytes() -> Int { retention?.nbytes() ?? pages?.residentBytes() ?? 0 }
    /// Tokens the retention store evicted since the chat started (0 with paging).
    var evictedTokens: Int { retention?.evicted ?? 0 }

    func reset() {
        retention?.reset()
        pages?.reset()
    }

    func step(ids: [Int], positions: [Int]) throws -> [Float] {
        try calls(ids, positions, allRows: false).last!
    }

    func verify(ids: [Int], positions: [Int]) throws -> [[Float]] {
        try calls(ids, positions, allRows: true)
    }

    func truncate(_ length: Int) throws {
        if let retention { try retention.truncate(length) } else { pages?.truncate(length) }
    }

    /// The tokens in calls of at most one chunk; each call's last row, or every row with `allRows`.
    private func calls(_ ids: [Int], _ positions: [Int], allRows: Bool) throws -> [[Float]] {
        let chunk = retention != nil ? RetentionStore.chunk : policy.window > 0 ? policy.pageLen : ids.count
        var rows: [[Float]] = []
        var start = 0
        while start < ids.count {
            let end = min(ids.count, start + chunk)
            let logits = try run(Array(ids[start..<end]), Array(positions[start..<end]))
            rows = allRows ? rows + (try logitRows(logits)) : [try lastRow(logits)]
            start = end
        }
        return rows
    }

    private func run(_ ids: [Int], _ positions: [Int]) throws -> MLMultiArray? {
        let t = NSNumber(value: ids.count)
        let inputIds = try MLMultiArray(shape: [1, t], dataType: .int32)
        let positionIds = try MLMultiArray(shape: [1, t], dataType: .int32)
        for i in ids.indices {
            inputIds[i] = NSNumber(value: ids[i])
            positionIds[i] = NSNumber(value: positions[i])  // absolute: RoPE never shifts when tokens are evicted
        }
        var features: [String: Any] = ["input_ids": inputIds, "position_ids": positionIds]
        let feeds = retention?.feeds() ?? pages?.feeds() ?? [:]
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
            let shape = array.shape.map(\.intValue)
            if retention != nil {
                let floats = rowMajorFloats(array)
                let bytes = floats.withUnsafeBytes { Array($0) }
                presents[past] = KvTensor(name: past, dtype: "float32", shape: shape, data: bytes)
            } else {
                presents[past] = KvTensor(name: past, dtype: "float16", shape: shape, data: contiguousBytes(array))
            }
        }
        if let retention {  // the new tokens' retention logits go to the store before it takes their rows
            let signal = retention.wantsRetention ? out.featureValue(for: "retention")?.multiArrayValue : nil
            try retention.observe(signal.map(rowMajorFloats))
            try retention.update(presents, newTokens: ids.count)
        } else {
            pages?.update(presents, newTokens: ids.count)
        }
        return out.featureValue(for: "logits")?.multiArrayValue
    }

    /// A float16 MLMultiArray of the tensor (fp32 rows of the retention store are rounded to fp16 here).
    private func multiArray(_ tensor: KvTensor) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: tensor.shape.map { NSNumber(value: $0) }, dataType: .float16)
        var data = tensor.data
        if tensor.dtype == "float32" {
            var floats = [Float](repeating: 0, count: data.count / 4)
            floats.withUnsafeMutableBytes { $0.copyBytes(from: tensor.data) }
            data = floats.map(Fp16.bits).withUnsafeBytes { Array($0) }
        }
        array.withUnsafeMutableBytes { raw, _ in data.withUnsafeBytes { raw.copyMemory(from: $0) } }
        return array
    }
}

/// The values of a float16 or float32 MLMultiArray in row-major order, as float32 (fp16 converted exactly).
func rowMajorFloats(_ array: MLMultiArray) -> [Float] {
    if array.dataType == .float16 {
        let bytes = contiguousBytes(array)
        return stride(from: 0, to: bytes.count, by: 2).map { Fp16.float(UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8) }
    }
    let shape = array.shape.map(\.intValue)
    let strides = array.strides.map(\.intValue)
    var out = [Float](repeating: 0, count: shape.reduce(1, *))
    array.withUnsafeBufferPointer(ofType: Float.self) { src in
        for flat in out.indices {
            var rest = flat
            var offset = 0
            for d in shape.indices.reversed() {
                offset += (rest % shape[d]) * strides[d]
                rest /= shape[d]
            }
            out[flat] = src[offset]
        }
    }
    return out
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
    return row(array, array.shape[1].intValue - 1)
}

/// Every position's logits [T][V] of a [1, T, V] output (a verify call's).
func logitRows(_ array: MLMultiArray?) throws -> [[Float]] {
    guard let array else { throw BundleError(kind: .invalid, message: "the model returned no logits") }
    return (0..<array.shape[1].intValue).map { row(array, $0) }
}

/// Position `t`'s logits [V] of a [1, T, V] output (fp16 or fp32, any strides).
private func row(_ array: MLMultiArray, _ t: Int) -> [Float] {
    let shape = array.shape.map(\.intValue)
    let strides = array.strides.map(\.intValue)
    let vocab = shape[2]
    let base = t * strides[1]
    if array.dataType == .float16 {
        return array.withUnsafeBufferPointer(ofType: Float16.self) { p in (0..<vocab).map { Float(p[base + $0 * strides[2]]) } }
    }
    return array.withUnsafeBufferPointer(ofType: Float.self) { p in (0..<vocab).map { p[base + $0 * strides[2]] } }
}
