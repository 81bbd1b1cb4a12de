import Foundation

/// A decode-step model with its own KV cache, batch 1 (runtimes/decode_loop.py StepBackend).
public protocol ModelSession: AnyObject {
    /// Tokens the cache may hold; Int.max when a window lets generation run past the model's context.
    var contextLength: Int { get }
    /// Tokens fed so far: the next token's absolute position.
    var cacheLength: Int { get }
    func reset() throws
    /// Run the tokens at their absolute positions, append them to the cache, return the last position's logits.
    func step(ids: [Int], positions: [Int]) throws -> [Float]
}

/// The seam speculative decoding needs (runtimes/speculative.py SpeculativeBackend): a model call that returns the
/// logits of every token it takes, and a KV store that can roll back. A session implements it when its graph takes
/// several tokens per call (every exported graph does) and its store can forget the newest rows.
public protocol SpeculativeSession: ModelSession {
    /// Run the tokens at their absolute positions, append them to the cache, return every position's logits [T][V].
    func verify(ids: [Int], positions: [Int]) throws -> [[Float]]
    /// Keep the first `length` cached tokens (rejected drafts' rows go).
    func truncate(_ length: Int) throws
}

public enum StopReason: String, Sendable { case limit, eos, context, stopped }

public struct GenerationStats: Sendable {
    public let promptTokens: Int
    public let generatedTokens: Int
    public let prefillSeconds: Double
    public let decodeSeconds: Double
    public let stopReason: StopReason
    /// Model calls after the prefill; with speculation each verifies the last token and the drafts.
    public let modelCalls: Int
    /// Speculation: tokens the n-gram drafter proposed, and how many confirmed ones were emitted.
    public let draftTokens: Int
    public let acceptedTokens: Int

    public init(
        promptTokens: Int, generatedTokens: Int, prefillSeconds: Double, decodeSeconds: Double, stopReason: StopReason,
        modelCalls: Int = 0, draftTokens: Int = 0, acceptedTokens: Int = 0
    ) {
        self.promptTokens = promptTokens
        self.generatedTokens = generatedTokens
        self.prefillSeconds = prefillSeconds
        self.decodeSeconds = decodeSeconds
        self.stopReason = stopReason
        self.modelCalls = modelCalls
        self.draftTokens = draftTokens
        self.acceptedTokens = acceptedTokens
    }

    /// Tokens per model call after the prefill (1 without speculation).
    public var tokensPerCall: Double { modelCalls > 0 ? Double(max(generatedTokens - 1, 0)) / Double(modelCalls) : 0 }

    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 ? Double(max(generatedTokens - 1, 0)) / decodeSeconds : 0
    }
}

public struct GenerationResult {
    public let tokens: [Int]
    public let stats: GenerationStats
}

public struct ContextFullError: Error, CustomStringConvertible {
    public let description: String
}

public struct EmptyPromptError: Error, CustomStringConvertible {
    public var description: String { "the first turn needs a non-empty prompt" }
}

/// A chat over one model session: the first turn prefills from position 0 (the loop of runtimes/decode_loop.py);
/// each later turn keeps the KV cache and feeds only the token sampled last (never fed yet) and the new prompt.
///
/// With `maxDraft` > 0, greedy sampling and a `SpeculativeSession`, tokens after the first come from speculative
/// decoding with an `NgramDrafter` (runtimes/speculative.py Speculation with `--draft ngram`, no tie guard): one call
/// verifies the last token and up to `maxDraft` guesses, the longest prefix of guesses equal to the greedy choices is
/// kept, the rows after it are rolled back, and the next token comes from the last kept row. The drafter sees this
/// turn's fed tokens and its output (Python's `run.prompt + run.out`). The turn ends with the cache as plain decoding
/// leaves it (the last token pending), so later turns continue the same way. Otherwise (sampling, a session without
/// verify) decoding is plain, one token per call.
public final class Conversation {
    private let session: ModelSession
    private let sampler: Sampler
    /// Every id that ends generation (EOS, end of turn, ...).
    public let stopIds: Set<Int>
    private let feedStopToken: Bool
    private let clock: () -> Double
    private let maxDraft: Int
    /// The last sampled token, not yet in the cache; nil before the first turn.
    public private(set) var pending: Int?
    /// True after a first turn: the next generate continues the KV cache.
    public var started: Bool { pending != nil }
    /// The session that verifies drafts, or nil when this conversation decodes one token per call.
    public var speculative: SpeculativeSession? {
        maxDraft > 0 && sampler.greedy ? session as? SpeculativeSession : nil
    }

    /// Stops at `eosId` only and feeds it at the next turn (the byte models' plain continuation).
    public convenience init(
        session: ModelSession, sampler: Sampler, eosId: Int, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.init(session: session, sampler: sampler, stopIds: [eosId], feedStopToken: true, clock: clock)
    }

    /// With `feedStopToken` false a stop token is not fed at the next turn (a chat format's `assistant.suffix` writes
    /// the end of the turn, as the template does). `maxDraft` > 0 turns on n-gram speculation (see the type's doc).
    public init(
        session: ModelSession, sampler: Sampler, stopIds: [Int], feedStopToken: Bool,
        clock: @escaping () -> Double = { Date().timeIntervalSince1970 }, maxDraft: Int = 0
    ) {
        precondition(maxDraft >= 0, "the draft length must be >= 0 (0: no speculation)")
        self.session = session
        self.sampler = sampler
        self.stopIds = Set(stopIds)
        self.feedStopToken = feedStopToken
        self.clock = clock
        self.maxDraft = maxDraft
    }

    public func reset() throws {
        try session.reset()
        pending = nil
    }

    public func generate(
        prompt: [Int], maxNewTokens: Int, shouldStop: () -> Bool = { false }, onToken: (Int) -> Void = { _ in }
    ) throws -> GenerationResult {
        guard !prompt.isEmpty || pending != nil else {
            throw EmptyPromptError()
        }
        let context = session.contextLength
        var ids = prompt
        if let carried = pending, feedStopToken || !stopIds.contains(carried) { ids = [carried] + prompt }
        guard !ids.isEmpty else { throw EmptyPromptError() }
        if pending == nil { try session.reset() }
        let start = session.cacheLength
        guard start + ids.count <= context else {
            throw ContextFullError(description: "the conversation needs \(start + ids.count) tokens, more than the context (\(context))")
        }
        guard maxNewTokens > 0 else {
            return GenerationResult(
                tokens: [],
                stats: GenerationStats(
                    promptTokens: ids.count, generatedTokens: 0, prefillSeconds: 0, decodeSeconds: 0, stopReason: .limit))
        }
        var out: [Int] = []
        let verifier = speculative.map {
            Verifier(session: $0, drafter: NgramDrafter(maxDraft: maxDraft), history: ids, maxNewTokens: maxNewTokens, context: context)
        }
        var reason = StopReason.limit
        var t0 = clock()
        var token = sampler.sample(try session.step(ids: ids, positions: Array(start..<(start + ids.count))))
        let now = clock()
        let prefill = now - t0
        t0 = now
        var fed = start + ids.count  // the cache plain decoding holds before `token`: `token`'s position
        var calls = 0
        while true {
            pending = token
            if stopIds.contains(token) {
                reason = .eos
                break
            }
            out.append(token)
            onToken(token)
            if fed >= context {
                reason = .context
                break
            }
            if out.count >= maxNewTokens { break }
            if shouldStop() {
                reason = .stopped
                break
            }
            if let verifier {
                token = try verifier.token(out)
            } else {
                token = sampler.sample(try session.step(ids: [token], positions: [fed]))
                calls += 1
            }
            fed += 1
        }
        // a verify call may have cached the last token (an accepted draft): plain decoding leaves it pending
        if let verifier, session.cacheLength > fed { try verifier.session.truncate(fed) }
        let decode = out.isEmpty ? 0 : clock() - t0
        return GenerationResult(
            tokens: out,
            stats: GenerationStats(
                promptTokens: ids.count, generatedTokens: out.count, prefillSeconds: prefill, decodeSeconds: decode,
                stopReason: reason, modelCalls: verifier?.calls ?? calls, draftTokens: verifier?.drafted ?? 0,
                acceptedTokens: verifier?.accepted ?? 0))
    }
}

/// One turn's verify calls: the tokens they decided, handed out one at a time.
private final class Verifier {
    let session: SpeculativeSession
    private let drafter: NgramDrafter
    private var history: [Int]  // the turn's fed tokens, then its output
    private let fedCount: Int
    private let maxNewTokens: Int
    private let context: Int
    private var ready: [Int] = []
    private var readyDrafts = 0  // confirmed drafts at the head of `ready` (then the token after them)
    private(set) var calls = 0
    private(set) var drafted = 0
    private(set) var accepted = 0

    init(session: SpeculativeSession, drafter: NgramDrafter, history: [Int], maxNewTokens: Int, context: Int) {
        self.session = session
        self.drafter = drafter
        self.history = history
        fedCount = history.count
        self.maxNewTokens = maxNewTokens
        self.context = context
    }

    func token(_ out: [Int]) throws -> Int {
        if ready.isEmpty { try call(out) }
        if readyDrafts > 0 {  // counted when handed out, as Python does (a stop may come first)
            readyDrafts -= 1
            accepted += 1
        }
        return ready.removeFirst()
    }

    /// Verify the last token and the drafter's guesses in one call; keep the confirmed ones and the next.
    private func call(_ out: [Int]) throws {
        history += out[(history.count - fedCount)...]
        let base = session.cacheLength
        let room = max(0, min(drafter.maxDraft, maxNewTokens - out.count, context - base - 1))
        let drafts = room > 0 ? drafter.propose(history, room: room) : []
        let ids = [out.last!] + drafts
        let rows = try session.verify(ids: ids, positions: Array(base..<(base + ids.count)))
        var kept = 0
        while kept < drafts.count && Sampler.argmax(rows[kept]) == drafts[kept] { kept += 1 }
        drafter.observe(proposed: drafts.count, accepted: kept)
        try session.truncate(base + 1 + kept)
        calls += 1
        drafted += drafts.count
        readyDrafts = kept
        ready = Array(drafts[..<kept]) + [Sampler.argmax(rows[kept])]
    }
}
