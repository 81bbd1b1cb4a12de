import Foundation

/// A tokenizer.json the app cannot use (kind not implemented, malformed); the message names what and why.
public struct TokenizerError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

/// Text from token ids as they arrive (UTF8StreamDecoder for byte tokenizers, HfStreamDecoder for tokenizer.json).
public protocol TokenStreamDecoder {
    mutating func push(_ id: Int) -> String
    mutating func flush() -> String
}

extension UTF8StreamDecoder: TokenStreamDecoder {}

/// What the app needs of a bundle's tokenizer, whichever kind (omnicoder-byte or a Hugging Face tokenizer.json).
///
/// `encode(_:addBos:)` never applies a post-processor: it prepends `bosId` when asked (and the id exists), as
/// omnicoder/tokenizer.py's `HFTokenizer.encode` does; `addsBos` says whether the model's own tokenizer starts a
/// sequence with BOS (the manifest's `tokenizer.add_bos`). `decode` and `streamDecoder` skip special tokens.
public protocol TextTokenizer: Sendable {
    associatedtype Stream: TokenStreamDecoder
    var vocabSize: Int { get }
    var bosId: Int { get }
    var eosId: Int { get }
    var addsBos: Bool { get }
    var stopIds: [Int] { get }
    func encode(_ text: String, addBos: Bool) -> [Int]
    func decode(_ ids: [Int]) -> String
    func streamDecoder() -> Stream
}

extension TextTokenizer {
    public func encode(_ text: String) -> [Int] { encode(text, addBos: false) }
}

extension ByteTokenizer: TextTokenizer {
    public var addsBos: Bool { true }
    public var stopIds: [Int] { [eosId] }
}

/// A bundle's Hugging Face tokenizer: `HfTokenizer` with the ids and flags the manifest records (`model.bos_id`,
/// `model.eos_id`, `tokenizer.add_bos`, `tokenizer.stop_ids`). Chat formatting builds on `hf.encode` with special
/// tokens matched in the text (e.g. "<|im_start|>user\n...").
public struct BundleHfTokenizer: TextTokenizer {
    public let hf: HfTokenizer
    public let bosId: Int
    public let eosId: Int
    public let addsBos: Bool
    public let stopIds: [Int]
    public var vocabSize: Int { hf.vocabSize }

    public init(hf: HfTokenizer, bosId: Int, eosId: Int, addsBos: Bool, stopIds: [Int]) {
        self.hf = hf
        self.bosId = bosId
        self.eosId = eosId
        self.addsBos = addsBos
        self.stopIds = Array(Set(stopIds + [eosId]).filter { $0 >= 0 }).sorted()
    }

    public func encode(_ text: String, addBos: Bool) -> [Int] {
        let ids = hf.encode(text, addSpecialTokens: false)
        return addBos && bosId >= 0 ? [bosId] + ids : ids
    }

    public func decode(_ ids: [Int]) -> String { hf.decode(ids, skipSpecialTokens: true) }

    public func streamDecoder() -> HfStreamDecoder { hf.streamDecoder(skipSpecialTokens: true) }
}
