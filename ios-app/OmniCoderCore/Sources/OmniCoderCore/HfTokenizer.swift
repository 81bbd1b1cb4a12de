import Foundation

/// A Hugging Face tokenizer.json tokenizer with the `tokenizers` library's ids (checked on
/// tests/vectors/hf_tokenizer.json): byte-level BPE as SmolLM2, Qwen2/2.5/3 and Llama-3 ship it.
///
/// `encode(_:addSpecialTokens:)` follows `Tokenizer::encode`: added tokens first (special and `normalized: false`
/// ones on the raw text, then the normalized ones on the normalized text; leftmost-longest), the normalizer (NFC /
/// NFD / NFKC / NFKD / Sequence), the pre-tokenizer (ByteLevel with GPT-2's regex, Split with the file's regex,
/// Digits, Sequence), the BPE model, and with `addSpecialTokens` the post-processor (TemplateProcessing's BOS).
/// `decode` joins tokens through the decoder (ByteLevel, ByteFallback, Fuse, Replace, Sequence). Other kinds
/// (Unigram, WordPiece, WordLevel, Metaspace, BERT pieces, Lowercase, ...) throw a TokenizerError naming them.
public final class HfTokenizer: @unchecked Sendable {  // immutable after init; NSRegularExpression is thread-safe
    public let model: BpeModel
    public let addedTokens: [AddedToken]
    private let addedById: [Int: AddedToken]
    private let addedIdByContent: [[UInt16]: Int]
    private let specialContents: Set<[UInt16]>
    private let normalize: (String) -> String
    private let preTokenizer: PreTokenizer
    private let decoder: TokenDecoder?
    private let postProcess: ([Int]) -> [Int]
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    /// Distinct tokens, added ones included (`get_vocab_size(with_added_tokens=True)`).
    public let vocabSize: Int

    public convenience init(json data: Data) throws {
        guard let spec = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw TokenizerError("tokenizer.json is not a JSON object; re-export the bundle")
        }
        try self.init(spec: spec)
    }

    public init(spec: [String: Any]) throws {
        guard let modelSpec = spec.object("model") else { throw TokenizerError("tokenizer.json has no model") }
        model = try BpeModel(modelSpec)
        normalize = try normalizerOf(spec.object("normalizer"))
        preTokenizer = try preTokenizerOf(spec.object("pre_tokenizer"))
        decoder = try decoderOf(spec.object("decoder"))
        postProcess = try postProcessorOf(spec.object("post_processor"))
        addedTokens = try spec.objects("added_tokens").map(AddedToken.init)
        var byId: [Int: AddedToken] = [:]
        var byContent: [[UInt16]: Int] = [:]
        for t in addedTokens {
            byId[t.id] = t
            byContent[Array(t.content.utf16)] = t.id
        }
        addedById = byId
        addedIdByContent = byContent
        specialContents = Set(addedTokens.filter(\.special).map { Array($0.content.utf16) })
        let normalized = addedTokens.filter(\.normalized)
        let raw = addedTokens.filter { !$0.normalized }
        rawMatcher = AddedTokenMatcher(raw, raw.map(\.content))
        normalizedMatcher = AddedTokenMatcher(normalized, normalized.map { [normalize] in normalize($0.content) })
        vocabSize = Set(model.vocab.keys.map { Array($0.utf16) }).union(byContent.keys).count
    }

    public func tokenToId(_ token: String) -> Int? { addedIdByContent[Array(token.utf16)] ?? model.vocab[token] }

    public func idToToken(_ id: Int) -> String? { addedById[id]?.content ?? model.idToToken[id] }

    public func isSpecial(_ id: Int) -> Bool { idToToken(id).map { specialContents.contains(Array($0.utf16)) } ?? false }

    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        var out: [Int] = []
        for (piece, id) in rawMatcher.split(text) {
            if let id {
                out.append(id)
                continue
            }
            if piece.isEmpty { continue }
            for (part, partId) in normalizedMatcher.split(normalize(piece)) {
                if let partId {
                    out.append(partId)
                } else if !part.isEmpty {
                    // the patterns compiled at load and the BPE vocab cannot fail here; a failure drops the part
                    for word in (try? preTokenizer([part])) ?? [] { out += (try? model.tokenize(word)) ?? [] }
                }
            }
        }
        return addSpecialTokens ? postProcess(out) : out
    }

    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        let tokens = ids.compactMap(idToToken).filter { !skipSpecialTokens || !specialContents.contains(Array($0.utf16)) }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder(tokens).joined()
    }

    public func streamDecoder(skipSpecialTokens: Bool = true) -> HfStreamDecoder {
        HfStreamDecoder(tokenizer: self, skipSpecialTokens: skipSpecialTokens)
    }
}

/// Text as tokens arrive, like omnicoder/tokenizer.py's incremental decoder: the decoding of the tokens since the
/// last emitted piece, held back while it ends with U+FFFD (an incomplete character).
public struct HfStreamDecoder: TokenStreamDecoder {
    let tokenizer: HfTokenizer
    let skipSpecialTokens: Bool
    private var pending: [Int] = []

    init(tokenizer: HfTokenizer, skipSpecialTokens: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    public mutating func push(_ id: Int) -> String {
        pending.append(id)
        let text = tokenizer.decode(pending, skipSpecialTokens: skipSpecialTokens)
        if text.unicodeScalars.last == "\u{FFFD}" { return "" }
        pending = []
        return text
    }

    public mutating func flush() -> String {
        let text = tokenizer.decode(pending, skipSpecialTokens: skipSpecialTokens)
        pending = []
        return text
    }
}
