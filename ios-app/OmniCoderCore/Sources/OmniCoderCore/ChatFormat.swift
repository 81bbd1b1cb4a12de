import Foundation

/// The text written around a message of one role.
public struct RolePiece: Equatable, Sendable {
    public let prefix: String
    public let suffix: String
    public init(prefix: String, suffix: String) {
        self.prefix = prefix
        self.suffix = suffix
    }
}

/// The bundle's chat template as role pieces, rendered at export (export/chat_format.py; the manifest's
/// `tokenizer.chat_format`). A first turn is the preamble (or the system message) + the user turn + the generation
/// prompt; a later turn continues the KV cache with the end of the reply (`assistant.suffix`) + the user turn + the
/// generation prompt. Tokenized with special tokens matched in the text, this gives the ids Python's ChatSession
/// (runtimes/chat.py) feeds for the same conversation.
public struct ChatFormat: Equatable, Sendable {
    public let preamble: String
    public let system: RolePiece?
    public let user: RolePiece
    public let assistant: RolePiece
    public let generationPrompt: String
    /// Whether the template strips each message's content (Jinja's `| trim`, Python's str.strip()).
    public let trim: Bool

    public init(
        preamble: String, system: RolePiece?, user: RolePiece, assistant: RolePiece, generationPrompt: String,
        trim: Bool = false
    ) {
        self.preamble = preamble
        self.system = system
        self.user = user
        self.assistant = assistant
        self.generationPrompt = generationPrompt
        self.trim = trim
    }

    /// The manifest's `tokenizer.chat_format`; nil when absent, an `invalid` BundleError when malformed.
    public static func from(json: Any?) throws -> ChatFormat? {
        guard let json, !(json is NSNull) else { return nil }
        func bad() -> BundleError {
            BundleError(kind: .invalid, message: "manifest.json is invalid at tokenizer/chat_format; re-export the bundle")
        }
        guard let obj = json as? [String: Any] else { throw bad() }
        func piece(_ key: String) throws -> RolePiece {
            guard let p = obj[key] as? [String: Any], let prefix = p["prefix"] as? String, let suffix = p["suffix"] as? String
            else { throw bad() }
            return RolePiece(prefix: prefix, suffix: suffix)
        }
        guard let preamble = obj["preamble"] as? String, let generation = obj["generation_prompt"] as? String,
            obj.keys.contains("system")
        else { throw bad() }
        let system = obj["system"] is NSNull ? nil : try piece("system")
        return ChatFormat(
            preamble: preamble, system: system, user: try piece("user"), assistant: try piece("assistant"),
            generationPrompt: generation, trim: obj["trim"] as? Bool ?? false)
    }

    /// The first turn's text. A template that takes no system message gets the system text before the user's.
    public func firstTurn(_ user: String, systemPrompt: String? = nil) -> String {
        guard let sys = systemPrompt, !sys.isEmpty else { return preamble + userTurn(user) }
        if let system { return system.prefix + content(sys) + system.suffix + userTurn(user) }
        return preamble + userTurn(sys + "\n\n" + user)
    }

    /// A later turn's text: it closes the model's reply (whose end-of-turn token was not fed) and asks again.
    public func nextTurn(_ user: String) -> String { assistant.suffix + userTurn(user) }

    private func userTurn(_ text: String) -> String { user.prefix + content(text) + user.suffix + generationPrompt }

    private func content(_ text: String) -> String { trim ? ChatFormat.pyStrip(text) : text }

    /// Python's str.isspace characters.
    public static func isPySpace(_ u: UInt16) -> Bool {
        (0x09...0x0D).contains(u) || (0x1C...0x20).contains(u) || u == 0x85 || u == 0xA0 || u == 0x1680
            || (0x2000...0x200A).contains(u) || u == 0x2028 || u == 0x2029 || u == 0x202F || u == 0x205F || u == 0x3000
    }

    /// Python's str.strip() (Jinja's `trim` filter), on UTF-16 code units (every such space is one unit).
    public static func pyStrip(_ text: String) -> String {
        let units = Array(text.utf16)
        var start = 0
        var end = units.count
        while start < end && isPySpace(units[start]) { start += 1 }
        while end > start && isPySpace(units[end - 1]) { end -= 1 }
        return String(decoding: units[start..<end], as: UTF16.self)
    }
}

/// The prompt ids of each turn. With a chat format the text is tokenized as written (the template writes BOS where
/// the model wants one, as Hugging Face's apply_chat_template does); without one (byte models, templates the
/// exporter could not describe) the user's text is the prompt, later turns start on a new line, and BOS comes first
/// only when the tokenizer adds one (`firstTurn && tokenizer.addsBos`).
public struct ChatPrompter: Sendable {
    public let tokenizer: any TextTokenizer
    public let format: ChatFormat?

    public init(tokenizer: any TextTokenizer, format: ChatFormat?) {
        self.tokenizer = tokenizer
        self.format = format
    }

    public func ids(_ user: String, firstTurn: Bool, systemPrompt: String? = nil) -> [Int] {
        guard let f = format else {
            return tokenizer.encode(firstTurn ? user : "\n" + user, addBos: firstTurn && tokenizer.addsBos)
        }
        return tokenizer.encode(firstTurn ? f.firstTurn(user, systemPrompt: systemPrompt) : f.nextTurn(user), addBos: false)
    }

    /// In a chat, an end-of-turn id is not fed at the next turn: `assistant.suffix` writes the end of the reply.
    public var feedsStopToken: Bool { format == nil }
}
