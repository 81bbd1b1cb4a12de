import Foundation

/// One entry of tokenizer.json's `added_tokens`.
public struct AddedToken: Sendable {
    public let id: Int
    public let content: String
    public let singleWord: Bool
    public let lstrip: Bool
    public let rstrip: Bool
    public let normalized: Bool
    public let special: Bool

    init(_ o: JSON) throws {
        guard let id = o["id"] as? Int, let content = o.string("content") else {
            throw TokenizerError("tokenizer.json added token \(o) has no id or content")
        }
        self.id = id
        self.content = content
        singleWord = o.bool("single_word", false)
        lstrip = o.bool("lstrip", false)
        rstrip = o.bool("rstrip", false)
        special = o.bool("special", false)
        normalized = o.bool("normalized", !special)
    }
}

/// Finds added tokens in text like the tokenizers library's AddedVocabulary: leftmost-longest matches of the
/// tokens' contents (`patterns`, already normalized for normalized tokens) compared code unit by code unit (never
/// by Swift's canonical equivalence), then single_word, lstrip and rstrip.
struct AddedTokenMatcher: Sendable {
    private let byFirst: [UInt16: [([UInt16], AddedToken)]]

    init(_ tokens: [AddedToken], _ patterns: [String]) {
        var map: [UInt16: [([UInt16], AddedToken)]] = [:]
        for (token, pattern) in zip(tokens, patterns) where !pattern.isEmpty {
            let units = Array(pattern.utf16)
            map[units[0], default: []].append((units, token))
        }
        byFirst = map.mapValues { $0.sorted { $0.0.count > $1.0.count } }
    }

    /// The pieces of `text` (each with the added token's id, or nil for text between tokens), covering it.
    func split(_ text: String) -> [(String, Int?)] {
        if text.isEmpty || byFirst.isEmpty { return [(text, nil)] }
        let u = Array(text.utf16)
        func piece(_ a: Int, _ b: Int) -> String { String(decoding: u[a..<b], as: UTF16.self) }
        func scalar(at i: Int) -> Unicode.Scalar? { scalarAt(u, i) }
        func scalar(before i: Int) -> (Unicode.Scalar, Int)? { scalarBefore(u, i) }
        var out: [(String, Int?)] = []
        var startOffset = 0
        var i = 0
        while i < u.count {
            guard let (pattern, token) = byFirst[u[i]]?.first(where: { p in
                i + p.0.count <= u.count && u[i..<(i + p.0.count)].elementsEqual(p.0)
            }) else {
                i += 1
                continue
            }
            var start = i
            var stop = i + pattern.count
            i = stop
            if token.singleWord {
                let startSpace = start == 0 || !(scalar(before: start).map { isWordChar($0.0) } ?? false)
                let stopSpace = stop == u.count || !(scalar(at: stop).map(isWordChar) ?? false)
                if !startSpace || !stopSpace { continue }
            }
            if token.lstrip {
                var s = start
                while let (c, width) = scalar(before: s), isWhiteSpace(c) { s -= width }
                start = max(s, startOffset)
            }
            if token.rstrip {
                while stop < u.count, let c = scalar(at: stop), isWhiteSpace(c) { stop += UTF16.width(c) }
            }
            if startOffset < start { out.append((piece(startOffset, start), nil)) }
            out.append((piece(start, stop), token.id))
            startOffset = stop
        }
        if startOffset != u.count { out.append((piece(startOffset, u.count), nil)) }
        return out
    }
}

private func scalarAt(_ u: [UInt16], _ i: Int) -> Unicode.Scalar? {
    guard i < u.count else { return nil }
    if UTF16.isLeadSurrogate(u[i]), i + 1 < u.count, UTF16.isTrailSurrogate(u[i + 1]) {
        return UTF16.decode(UTF16.EncodedScalar([u[i], u[i + 1]]))
    }
    return Unicode.Scalar(u[i])
}

private func scalarBefore(_ u: [UInt16], _ i: Int) -> (Unicode.Scalar, Int)? {
    guard i > 0 else { return nil }
    if UTF16.isTrailSurrogate(u[i - 1]), i >= 2, UTF16.isLeadSurrogate(u[i - 2]) {
        return scalarAt(u, i - 2).map { ($0, 2) }
    }
    return Unicode.Scalar(u[i - 1]).map { ($0, 1) }
}

/// Unicode White_Space (Rust's `\s` and `char::is_whitespace`, Oniguruma's `\s`).
func isWhiteSpace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
    default: return false
    }
}

/// Rust regex's Unicode `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls.
func isWordChar(_ s: Unicode.Scalar) -> Bool {
    if s.properties.isAlphabetic || s.value == 0x200C || s.value == 0x200D { return true }
    switch s.properties.generalCategory {
    case .nonspacingMark, .enclosingMark, .spacingMark, .decimalNumber, .connectorPunctuation: return true
    default: return false
    }
}
