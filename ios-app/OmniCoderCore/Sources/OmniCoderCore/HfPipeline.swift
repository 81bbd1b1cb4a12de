import Foundation

/// GPT-2's byte <-> character table (`bytes_to_unicode`): every byte as a printable character.
enum ByteLevelTable {
    static let byteToScalar: [Unicode.Scalar] = {
        var out: [Unicode.Scalar] = []
        var n = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            out.append(Unicode.Scalar(UInt32(printable ? b : 256 + n))!)
            if !printable { n += 1 }
        }
        return out
    }()
    static let scalarToByte: [Int] = {
        var out = [Int](repeating: -1, count: 0x200)
        for (b, s) in byteToScalar.enumerated() { out[Int(s.value)] = b }
        return out
    }()

    static func encode(_ text: String) -> String {
        var view = String.UnicodeScalarView()
        for b in text.utf8 { view.append(byteToScalar[Int(b)]) }
        return String(view)
    }
}

typealias JSON = [String: Any]

extension Dictionary where Key == String, Value == Any {
    var kind: String { self["type"] as? String ?? "?" }
    func object(_ key: String) -> JSON? { self[key] as? JSON }
    func bool(_ key: String, _ fallback: Bool) -> Bool { self[key] as? Bool ?? fallback }
    func string(_ key: String) -> String? { self[key] as? String }
    func objects(_ key: String) -> [JSON] { self[key] as? [JSON] ?? [] }
}

// ---- normalizers ---------------------------------------------------------------------------------------------

func normalizerOf(_ spec: JSON?) throws -> (String) -> String {
    guard let spec else { return { $0 } }
    switch spec.kind {
    case "NFC": return { $0.precomposedStringWithCanonicalMapping }
    case "NFD": return { $0.decomposedStringWithCanonicalMapping }
    case "NFKC": return { $0.precomposedStringWithCompatibilityMapping }
    case "NFKD": return { $0.decomposedStringWithCompatibilityMapping }
    case "Sequence":
        let steps = try spec.objects("normalizers").map(normalizerOf)
        return { text in steps.reduce(text) { acc, step in step(acc) } }
    default:
        throw TokenizerError(
            "tokenizer.json normalizer \(spec.kind) is not supported (the app reads byte-level BPE tokenizers)")
    }
}

// ---- pre-tokenizers: pieces of text -> pieces ----------------------------------------------------------------

typealias PreTokenizer = ([String]) throws -> [String]

private func eachPiece(_ pieces: [String], _ f: (String) throws -> [String]) rethrows -> [String] {
    try pieces.flatMap(f).filter { !$0.isEmpty }
}

func preTokenizerOf(_ spec: JSON?) throws -> PreTokenizer {
    guard let spec else { return { $0 } }
    switch spec.kind {
    case "ByteLevel":
        let prefix = spec.bool("add_prefix_space", true)
        let regex = spec.bool("use_regex", true) ? try OnigPattern.compile(OnigPattern.gpt2) : nil
        return { pieces in
            try eachPiece(pieces) { p in
                let text = prefix && !p.hasPrefix(" ") ? " " + p : p
                let parts = try regex.map { try splitBy(text, findSpans($0, text), "Isolated") } ?? [text]
                return parts.map(ByteLevelTable.encode)
            }
        }
    case "Split":
        guard let pattern = spec.object("pattern") else { throw TokenizerError("tokenizer.json Split has no pattern") }
        let regex: NSRegularExpression
        if let r = pattern.string("Regex") {
            regex = try OnigPattern.compile(r)
        } else if let s = pattern.string("String") {
            regex = try OnigPattern.literal(s)
        } else {
            throw TokenizerError("tokenizer.json Split pattern is neither Regex nor String")
        }
        let behavior = spec.string("behavior") ?? "?"
        let invert = spec.bool("invert", false)
        _ = try splitBy("", [], behavior)  // unknown behaviors fail at load
        return { pieces in
            try eachPiece(pieces) { p in
                let spans = findSpans(regex, p).map { Span(start: $0.start, end: $0.end, isMatch: $0.isMatch != invert) }
                return try splitBy(p, spans, behavior)
            }
        }
    case "Digits":
        let behavior = spec.bool("individual_digits", false) ? "Isolated" : "Contiguous"
        return { pieces in try eachPiece(pieces) { p in try splitBy(p, findScalarSpans(p, isNumeric), behavior) } }
    case "Sequence":
        let steps = try spec.objects("pretokenizers").map(preTokenizerOf)
        return { pieces in try steps.reduce(pieces) { acc, step in try step(acc) } }
    default:
        throw TokenizerError(
            "tokenizer.json pre-tokenizer \(spec.kind) is not supported (the app reads byte-level BPE: ByteLevel, Split, Digits)"
        )
    }
}

/// Rust's `char::is_numeric`: general category Nd, Nl or No.
func isNumeric(_ s: Unicode.Scalar) -> Bool {
    switch s.properties.generalCategory {
    case .decimalNumber, .letterNumber, .otherNumber: return true
    default: return false
    }
}

// ---- decoders: tokens -> text pieces (`decode_chain`) ---------------------------------------------------------

typealias TokenDecoder = ([String]) -> [String]

/// Lossy UTF-8 (one U+FFFD per maximal invalid subpart, as Rust's `from_utf8_lossy`).
func lossyUTF8(_ bytes: [UInt8]) -> String {
    var decoder = UTF8StreamDecoder(surrogatePass: false)
    var units: [UInt16] = []
    for b in bytes { units += decoder.pushUnits(Int(b)) }
    units += decoder.flushUnits()
    return String(decoding: units, as: UTF16.self)
}

func decoderOf(_ spec: JSON?) throws -> TokenDecoder? {
    guard let spec else { return nil }
    switch spec.kind {
    case "ByteLevel":
        return { tokens in
            var bytes: [UInt8] = []
            for t in tokens {
                let mapped = t.unicodeScalars.map { $0.value < 0x200 ? ByteLevelTable.scalarToByte[Int($0.value)] : -1 }
                if mapped.allSatisfy({ $0 >= 0 }) { bytes += mapped.map { UInt8($0) } } else { bytes += Array(t.utf8) }
            }
            return [lossyUTF8(bytes)]
        }
    case "ByteFallback": return byteFallback
    case "Fuse": return { tokens in [tokens.joined()] }
    case "Replace":
        guard let pattern = spec.object("pattern"), let content = spec.string("content") else {
            throw TokenizerError("tokenizer.json Replace decoder needs a pattern and content")
        }
        let regex = try pattern.string("String").map(OnigPattern.literal) ?? OnigPattern.compile(pattern.string("Regex") ?? "")
        return { tokens in
            tokens.map { t in
                let ns = t as NSString
                return findSpans(regex, t).map {
                    $0.isMatch ? content : ns.substring(with: NSRange(location: $0.start, length: $0.end - $0.start))
                }.joined()
            }
        }
    case "Sequence":
        let steps = try spec.objects("decoders").compactMap(decoderOf)
        return { tokens in steps.reduce(tokens) { acc, step in step(acc) } }
    default:
        throw TokenizerError("tokenizer.json decoder \(spec.kind) is not supported (the app reads byte-level BPE tokenizers)")
    }
}

private func byteFallback(_ tokens: [String]) -> [String] {
    var out: [String] = []
    var bytes: [UInt8] = []
    func flush() {
        if bytes.isEmpty { return }
        let text = lossyUTF8(bytes)
        if Array(text.utf8) == bytes { out.append(text) } else { out += Array(repeating: "\u{FFFD}", count: bytes.count) }
        bytes = []
    }
    for t in tokens {
        let u = Array(t.utf8)
        if u.count == 6 && t.hasPrefix("<0x") && u[5] == UInt8(ascii: ">"),
            let b = UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
        {
            bytes.append(b)
        } else {
            flush()
            out.append(t)
        }
    }
    flush()
    return out
}

// ---- post-processors: ids of a sequence -> ids with the template's special tokens ------------------------------

func postProcessorOf(_ spec: JSON?) throws -> ([Int]) -> [Int] {
    guard let spec else { return { $0 } }
    switch spec.kind {
    case "ByteLevel": return { $0 }
    case "TemplateProcessing":
        let specials = spec.object("special_tokens") ?? [:]
        let parts: [[Int]?] = try spec.objects("single").map { piece in
            if piece["Sequence"] != nil { return nil }
            guard let token = piece.object("SpecialToken"), let id = token.string("id") else {
                throw TokenizerError("TemplateProcessing piece \(piece) is not supported")
            }
            guard let entry = specials.object(id), let ids = entry["ids"] as? [Int] else {
                throw TokenizerError("TemplateProcessing names \(id), which it does not define")
            }
            return ids
        }
        return { ids in parts.flatMap { $0 ?? ids } }
    case "Sequence":
        let steps = try spec.objects("processors").map(postProcessorOf)
        return { ids in steps.reduce(ids) { acc, step in step(acc) } }
    default:
        throw TokenizerError(
            "tokenizer.json post-processor \(spec.kind) is not supported (ByteLevel, TemplateProcessing)")
    }
}
