import Foundation

/// Token-level KV under a byte budget (runtimes/kv_retention.py RetentionKVCache; policies learned and streaming).
///
/// One entry per held token, in cache order: its absolute position, its rows per KV input (fp32, or packed by
/// `KvCompress` once compressed), its retention score logit(keep) - logit(drop) and class (argmax). The first
/// `sinkTokens` and the last `recent` tokens are always kept; while `nbytes()` exceeds the budget, `learned`
/// compresses the lowest-scored other token whose class is not "drop", and evicts the lowest-scored one when none is
/// left; `streaming` evicts the oldest. Positions stay absolute: the session feeds each token's true position (the
/// next one is `length`), so eviction never shifts RoPE. fp32 KV only, like Python: the store compresses rows itself.
public final class RetentionStore {
    /// Tokens per model call under retention (runtimes/onnx_session.py RETENTION_CHUNK): the policy acts between calls.
    public static let chunk = 8

    private struct Token {
        let position: Int
        let score: Float
        let klass: Int
        var rows: [[Float]]?  // per input: [heads * width]
        var packed: [[UInt8]]?  // per input, once compressed
    }

    public let layout: KvLayout
    public let policy: RetentionPolicy
    /// Bytes of one token in full precision (all layers).
    public let tokenBytes: Int
    /// Bytes of one compressed token (all layers), as Python counts them.
    public let compressBytes: Int
    /// The recent window: the policy's, else recentFraction of the tokens the budget holds in full precision.
    public let recent: Int
    /// Whether the session must pass the graph's `retention` output to `observe` (learned only).
    public let wantsRetention: Bool
    private let codec: KvCompress?
    private var held: [Token] = []
    private var pending: [Float]?
    private var compressedCount = 0
    /// Tokens fed so far (held or evicted): the next token's absolute position.
    public private(set) var length = 0
    /// Tokens evicted since the last reset.
    public private(set) var evicted = 0

    public init(layout: KvLayout, policy: RetentionPolicy) throws {
        try policy.validate()
        guard layout.kvDtype == "fp32", layout.dtypes.allSatisfy({ $0 == "float32" }) else {
            throw RetentionError("retention runs on bundles with fp32 KV (it compresses rows itself); re-export")
        }
        self.layout = layout
        self.policy = policy
        tokenBytes = layout.bytesPerToken()
        let fullTokens = Double(policy.budgetBytes) / Double(tokenBytes)
        recent = policy.recentWindow > 0 ? policy.recentWindow : max(1, Int(policy.recentFraction * fullTokens))
        compressBytes = layout.widths.reduce(0) { sum, w in
            let groups = w / KvCompress.groupSize(width: w, group: policy.compressGroup)
            let perRow = policy.compress == "u8" ? w + 4 * groups : policy.compress == "nf4" ? w / 2 + 2 * groups : 4 * w
            return sum + layout.heads * perRow
        }
        wantsRetention = policy.policy == "learned"
        codec = policy.compress == "none" ? nil : try KvCompress(dtype: policy.compress, group: policy.compressGroup)
    }

    public func reset() {
        held = []
        pending = nil
        compressedCount = 0
        length = 0
        evicted = 0
    }

    /// Tokens held (full or compressed).
    public var heldTokens: Int { held.count }
    /// Absolute positions of the held tokens, in cache order.
    public func positions() -> [Int] { held.map(\.position) }
    /// Which held tokens are compressed, in cache order.
    public func compressed() -> [Bool] { held.map { $0.packed != nil } }
    /// Resident bytes as stored: full tokens at `tokenBytes`, compressed ones at `compressBytes`.
    public func nbytes() -> Int { (held.count - compressedCount) * tokenBytes + compressedCount * compressBytes }

    /// The smallest size of a held token under this policy: compressed when `learned` compresses, else full.
    public var smallestTokenBytes: Int { wantsRetention && codec != nil ? min(tokenBytes, compressBytes) : tokenBytes }

    /// The largest number of tokens the budget can hold.
    public func maxHeldTokens() -> Int { policy.budgetBytes / smallestTokenBytes }

    /// This policy with its budget lowered, if needed, so that at most `tokens` tokens are ever held (a Core ML graph
    /// takes at most its --max-seq-len past + new tokens).
    public func policy(holdingAtMost tokens: Int) -> RetentionPolicy {
        var fitted = policy
        fitted.budgetBytes = min(policy.budgetBytes, max(1, tokens) * smallestTokenBytes)
        return fitted
    }

    /// The held tokens' rows per KV input, [1, heads, n, width] float32 in native order, in cache order.
    public func feeds() -> [String: KvTensor] {
        var out: [String: KvTensor] = [:]
        let n = held.count
        for (i, name) in layout.inputs.enumerated() {
            let width = layout.widths[i]
            var values = [Float](repeating: 0, count: layout.heads * n * width)
            var scratch = [Float](repeating: 0, count: layout.heads * width)
            for (j, token) in held.enumerated() {
                if let rows = token.rows {
                    scratch = rows[i]
                } else if let codec, let packed = token.packed {
                    codec.decode(packed[i], rows: layout.heads, width: width, into: &scratch)
                }
                for head in 0..<layout.heads {
                    let dst = (head * n + j) * width
                    values.replaceSubrange(dst..<(dst + width), with: scratch[(head * width)..<((head + 1) * width)])
                }
            }
            let bytes = values.withUnsafeBytes { Array($0) }
            out[name] = KvTensor(name: name, dtype: "float32", shape: [1, layout.heads, n, width], data: bytes)
        }
        return out
    }

    /// The retention logits [T, 3] (row-major) of the tokens the next `update` appends; nil: no signal.
    public func observe(_ retention: [Float]?) throws {
        if let retention, retention.count % 3 != 0 {
            throw RetentionError("retention logits must be [T, 3], got \(retention.count) values")
        }
        pending = retention
    }

    /// Append the last `newTokens` rows of each present ([1, heads, total, width] fp32, keyed by past input name).
    public func update(_ presents: [String: KvTensor], newTokens: Int) throws {
        guard newTokens >= 1 else { throw RetentionError("update needs at least one new token") }
        var rows = [[[Float]]](repeating: [], count: newTokens)
        for (i, name) in layout.inputs.enumerated() {
            guard let present = presents[name] else { throw RetentionError("no present tensor for \(name)") }
            let width = layout.widths[i]
            let total = present.shape[2]
            guard present.shape[1] == layout.heads, present.shape[3] == width, total >= newTokens,
                present.data.count == layout.heads * total * width * 4
            else {
                throw RetentionError(
                    "present \(name) has shape \(present.shape); expected [1, \(layout.heads), >= \(newTokens), \(width)]")
            }
            var floats = [Float](repeating: 0, count: present.data.count / 4)
            floats.withUnsafeMutableBytes { $0.copyBytes(from: present.data) }
            for k in 0..<newTokens {
                var token = [Float]()
                token.reserveCapacity(layout.heads * width)
                for head in 0..<layout.heads {
                    let src = (head * total + total - newTokens + k) * width
                    token.append(contentsOf: floats[src..<(src + width)])
                }
                rows[k].append(token)
            }
        }
        let first = pending.map { $0.count / 3 - newTokens } ?? 0
        guard first >= 0 else { throw RetentionError("retention logits cover fewer tokens than the \(newTokens) new ones") }
        for k in 0..<newTokens {
            var score: Float = 0
            var klass = 0
            if let logits = pending {
                let r = 3 * (first + k)
                klass = RetentionStore.firstExtreme(3, wantMax: true) { Double(logits[r + $0]) }
                if policy.policy == "learned" { score = logits[r] - logits[r + 2] }
            }
            held.append(Token(position: length + k, score: score, klass: klass, rows: rows[k], packed: nil))
        }
        length += newTokens
        pending = nil
        try enforceBudget()
    }

    /// Forget the tokens at positions >= `length` (speculative decoding's rollback).
    public func truncate(_ length: Int) throws {
        guard length >= 0, length <= self.length else {
            throw RetentionError("truncate to \(length), but the store has seen \(self.length) tokens")
        }
        held.removeAll { $0.position >= length }
        compressedCount = held.filter { $0.packed != nil }.count
        self.length = length
    }

    private func enforceBudget() throws {
        while nbytes() > policy.budgetBytes {
            let candidates = held.indices.filter {  // not protected: past the sinks and before the recent window
                held[$0].position >= policy.sinkTokens && held[$0].position < length - recent
            }
            if candidates.isEmpty {
                throw RetentionError(
                    "a KV budget of \(policy.budgetBytes) bytes cannot hold the \(policy.sinkTokens) sink "
                        + "and \(recent) recent tokens; raise the budget or shrink the window")
            }
            if policy.policy == "learned", let codec {
                let fresh = candidates.filter { held[$0].packed == nil && held[$0].klass != 2 }
                if !fresh.isEmpty {  // compress the lowest-ranked token that the head does not want dropped
                    let victim = fresh[RetentionStore.firstExtreme(fresh.count) { Double(held[fresh[$0]].score) }]
                    let full = held[victim].rows ?? []
                    held[victim].packed = full.indices.map {
                        codec.encode(full[$0], rows: layout.heads, width: layout.widths[$0])
                    }
                    held[victim].rows = nil
                    compressedCount += 1
                    continue
                }
            }
            let streaming = policy.policy == "streaming"  // the oldest; learned: the lowest score
            let victim = candidates[
                RetentionStore.firstExtreme(candidates.count) {
                    streaming ? Double(held[candidates[$0]].position) : Double(held[candidates[$0]].score)
                }]
            if held.remove(at: victim).packed != nil { compressedCount -= 1 }
            evicted += 1
        }
    }

    /// np.argmin / np.argmax over `count` values: the first extreme, or the first NaN when there is one.
    private static func firstExtreme(_ count: Int, wantMax: Bool = false, _ value: (Int) -> Double) -> Int {
        var best = 0
        var bestValue = value(0)
        if bestValue.isNaN { return 0 }
        for i in 1..<max(1, count) {
            let v = value(i)
            if v.isNaN { return i }
            if wantMax ? v > bestValue : v < bestValue {
                best = i
                bestValue = v
            }
        }
        return best
    }
}
