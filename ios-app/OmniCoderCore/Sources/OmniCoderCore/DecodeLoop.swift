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

public enum StopReason: String, Sendable { case limit, eos, context, stopped }

public struct GenerationStats: Sendable {
    public let promptTokens: Int
    public let generatedTokens: Int
    public let prefillSeconds: Double
    public let decodeSeconds: Double
    public let stopReason: StopReason

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
public final class Conversation {
    private let session: ModelSession
    private let sampler: Sampler
    /// Every id that ends generation (EOS, end of turn, ...).
    public let stopIds: Set<Int>
    private let feedStopToken: Bool
    private let clock: () -> Double
    /// The last sampled token, not yet in the cache; nil before the first turn.
    public private(set) var pending: Int?
    /// True after a first turn: the next generate continues the KV cache.
    public var started: Bool { pending != nil }

    /// Stops at `eosId` only and feeds it at the next turn (the byte models' plain continuation).
    public convenience init(
        session: ModelSession, sampler: Sampler, eosId: Int, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.init(session: session, sampler: sampler, stopIds: [eosId], feedStopToken: true, clock: clock)
    }

    /// With `feedStopToken` false a stop token is not fed at the next turn (a chat format's `assistant.suffix` writes
    /// the end of the turn, as the template does).
    public init(
        session: ModelSession, sampler: Sampler, stopIds: [Int], feedStopToken: Bool,
        clock: @escaping () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.session = session
        self.sampler = sampler
        self.stopIds = Set(stopIds)
        self.feedStopToken = feedStopToken
        self.clock = clock
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
        let prefillTokens = ids.count
        var positions = Array(start..<(start + ids.count))
        var out: [Int] = []
        var reason = StopReason.limit
        var t0 = clock()
        var prefill = 0.0
        for step in 0..<maxNewTokens {
            if step > 0 && shouldStop() {
                reason = .stopped
                break
            }
            let token = sampler.sample(try session.step(ids: ids, positions: positions))
            pending = token
            if step == 0 {
                let now = clock()
                prefill = now - t0
                t0 = now
            }
            if stopIds.contains(token) {
                reason = .eos
                break
            }
            out.append(token)
            onToken(token)
            if session.cacheLength >= context {
                reason = .context
                break
            }
            ids = [token]
            positions = [positions.last! + 1]
        }
        let decode = out.isEmpty ? 0 : clock() - t0
        return GenerationResult(
            tokens: out,
            stats: GenerationStats(
                promptTokens: prefillTokens, generatedTokens: out.count, prefillSeconds: prefill, decodeSeconds: decode,
                stopReason: reason))
    }
}
