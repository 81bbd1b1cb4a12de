import Foundation

/// The BPE model of a tokenizer.json (`models::bpe::BPE` of the tokenizers library): vocab, merges ranked by their
/// order ("a b" strings or ["a", "b"] lists), ignore_merges, unk_token / fuse_unk, byte_fallback, and the
/// continuing-subword prefix / end-of-word suffix. Merging follows `Word::merge_all`: lowest rank first, leftmost
/// first among equal ranks, a queued merge is dropped when the pair at its place no longer makes its token.
public struct BpeModel: Sendable {
    public let vocab: [String: Int]
    public let idToToken: [Int: String]
    private let merges: [Int: Int]  // (left id << 32 | right id) -> (rank << 32 | new id)
    private let unkToken: String?
    private let fuseUnk: Bool
    private let byteFallback: Bool
    private let ignoreMerges: Bool
    private let prefix: String?
    private let suffix: String?

    init(_ spec: JSON) throws {
        guard spec.kind == "BPE" else {
            throw TokenizerError("tokenizer.json model \(spec.kind) is not supported (the app reads BPE tokenizers)")
        }
        if let dropout = spec["dropout"] as? Double, dropout != 0 {
            throw TokenizerError("tokenizer.json BPE dropout \(dropout) is not supported (it is random)")
        }
        guard let raw = spec["vocab"] as? [String: Any] else { throw TokenizerError("tokenizer.json BPE has no vocab") }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(raw.count)
        for (k, v) in raw {
            guard let id = v as? Int else { throw TokenizerError("tokenizer.json vocab entry \(k) is not an id") }
            vocab[k] = id
        }
        self.vocab = vocab
        var reverse: [Int: String] = [:]
        for (k, id) in vocab { reverse[id] = k }
        idToToken = reverse
        unkToken = spec.string("unk_token")
        fuseUnk = spec.bool("fuse_unk", false)
        byteFallback = spec.bool("byte_fallback", false)
        ignoreMerges = spec.bool("ignore_merges", false)
        prefix = spec.string("continuing_subword_prefix")
        suffix = spec.string("end_of_word_suffix")
        let list = spec["merges"] as? [Any] ?? []
        let prefixCount = prefix?.unicodeScalars.count ?? 0
        var merges: [Int: Int] = [:]
        merges.reserveCapacity(list.count)
        for (rank, item) in list.enumerated() {
            let parts: [String]
            if let pair = item as? [String] { parts = pair } else { parts = (item as? String)?.split(separator: " ", omittingEmptySubsequences: false).map(String.init) ?? [] }
            guard parts.count == 2 else { throw TokenizerError("tokenizer.json merge \(rank + 1) is not 'a b' or [a, b]") }
            let (a, b) = (parts[0], parts[1])
            guard let aId = vocab[a], let bId = vocab[b] else {
                throw TokenizerError("tokenizer.json merge \(rank + 1) names a token that is not in the vocab")
            }
            let merged = a + String(String.UnicodeScalarView(b.unicodeScalars.dropFirst(prefixCount)))
            guard let newId = vocab[merged] else {
                throw TokenizerError("tokenizer.json merge \(rank + 1) makes '\(merged)', which is not in the vocab")
            }
            merges[aId << 32 | bId] = rank << 32 | newId
        }
        self.merges = merges
    }

    /// The ids of one pre-tokenized piece.
    public func tokenize(_ piece: String) throws -> [Int] {
        if piece.isEmpty { return [] }
        if ignoreMerges, let id = vocab[piece] { return [id] }
        return mergeAll(try symbols(piece))
    }

    private func symbols(_ word: String) throws -> [Int] {
        var ids: [Int] = []
        var unk = -1  // pending unk id (fused runs)
        let scalars = Array(word.unicodeScalars)
        for (i, scalar) in scalars.enumerated() {
            var s = String(scalar)
            if i > 0, let prefix { s = prefix + s }
            if i == scalars.count - 1, let suffix { s += suffix }
            if let id = vocab[s] {
                if unk >= 0 { ids.append(unk) }
                unk = -1
                ids.append(id)
                continue
            }
            if byteFallback {
                let bytes = s.utf8.map { vocab["<0x" + String($0, radix: 16, uppercase: true).leftPad(2) + ">"] }
                if bytes.allSatisfy({ $0 != nil }) {
                    ids += bytes.map { $0! }  // before a pending unk, as the tokenizers library does
                    continue
                }
            }
            if let unkToken {
                guard let unkId = vocab[unkToken] else {
                    throw TokenizerError("tokenizer.json unk_token \(unkToken) is not in the vocab")
                }
                if unk >= 0 && !fuseUnk { ids.append(unk) }
                unk = unkId
            }
        }
        if unk >= 0 { ids.append(unk) }
        return ids
    }

    private func mergeAll(_ start: [Int]) -> [Int] {
        var c = start
        let n = c.count
        var prev = (0..<n).map { $0 - 1 }
        var next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        var removed = [Bool](repeating: false, count: n)
        var queue = MergeHeap()
        func enqueue(_ pos: Int, _ a: Int, _ b: Int) {
            if let m = merges[a << 32 | b] { queue.push(MergeHeap.Entry(rank: m >> 32, pos: pos, newId: m & 0xFFFF_FFFF)) }
        }
        for p in 0..<max(0, n - 1) { enqueue(p, c[p], c[p + 1]) }
        while let top = queue.pop() {
            if removed[top.pos] || next[top.pos] == -1 { continue }
            let right = next[top.pos]
            guard let m = merges[c[top.pos] << 32 | c[right]], m & 0xFFFF_FFFF == top.newId else { continue }
            c[top.pos] = top.newId
            removed[right] = true
            next[top.pos] = next[right]
            if next[right] >= 0 { prev[next[right]] = top.pos }
            if prev[top.pos] >= 0 { enqueue(prev[top.pos], c[prev[top.pos]], c[top.pos]) }
            if next[top.pos] >= 0 { enqueue(top.pos, c[top.pos], c[next[top.pos]]) }
        }
        return (0..<n).filter { !removed[$0] }.map { c[$0] }
    }
}

/// A binary min-heap of queued merges ordered by (rank, pos).
struct MergeHeap {
    struct Entry {
        let rank: Int
        let pos: Int
        let newId: Int
        func less(_ o: Entry) -> Bool { rank != o.rank ? rank < o.rank : pos < o.pos }
    }
    private var items: [Entry] = []

    mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if !items[i].less(items[parent]) { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if items.isEmpty { return first }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < items.count && items[l].less(items[m]) { m = l }
            if r < items.count && items[r].less(items[m]) { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return first
    }
}

extension String {
    func leftPad(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
