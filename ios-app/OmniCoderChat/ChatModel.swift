import CoreML
import Foundation
import OmniCoderCore

struct Message: Identifiable {
    let id = UUID()
    let fromUser: Bool
    var text: String
}

/// Loads the bundle, holds the conversation (KV cache reused across turns) and streams tokens to the view.
@MainActor
final class ChatModel: ObservableObject {
    @Published var status = "loading"
    @Published var ready = false
    @Published var generating = false
    @Published var messages: [Message] = []
    @Published var stats = ""
    @Published var memory = ""
    @Published var error: String?

    var sampling = SamplingParams(temperature: 0.7, topK: 40, topP: 0.95, seed: 0)
    var maxNewTokens = 256
    var systemPrompt = ""
    private var conversation: Conversation?
    private var session: ModelSession?
    private var prompter: ChatPrompter?
    private var pagingNote = ""
    private let stopFlag = StopFlag()

    func load() async {
        do {
            let bundle = try await Task.detached(priority: .userInitiated) { try BundleLocator.verifiedBundle() }.value
            let (policy, note) = try MemoryInfo.policy(for: bundle)
            // retention (the bundle's model.retention.json, capped by the device's KV budget) replaces paging in stream mode
            status = "loading the model"
            let budget = MemoryInfo.kvBudgetBytes()
            // compiling / loading Core ML takes seconds: never on the main thread (the compiled model is cached)
            let (session, kvNote) = try await Task.detached(priority: .userInitiated) {
                try CoreMLSessionFactory.make(bundle: bundle, policy: policy, kvBudgetBytes: budget)
            }.value
            if (session as? StreamingSession)?.retention != nil {
                pagingNote = kvNote
            } else {
                pagingNote = kvNote.isEmpty ? note : "\(note) (\(kvNote))"
            }
            self.session = session
            let prompter = try bundle.prompter()  // the bundle's chat format, plain text without one
            self.prompter = prompter
            conversation = Conversation(
                session: session, sampler: try Sampler(sampling), stopIds: prompter.tokenizer.stopIds,
                feedStopToken: prompter.feedsStopToken)
            status = "\(bundle.manifest.model.name) ready"
            ready = true
            memory = memoryLine()
        } catch {
            status = "no model"
            self.error = "\(error)"
        }
    }

    private func memoryLine() -> String {
        let streaming = session as? StreamingSession
        let kv = Double(streaming?.residentKvBytes() ?? 0) / 1_048_576
        let evicted = streaming?.retention != nil ? ", \(streaming?.evictedTokens ?? 0) tokens evicted" : ""
        return String(format: "RSS %.0f MB, KV %.2f MB", MemoryInfo.residentMB(), kv) + evicted + ". " + pagingNote
    }

    func send(_ text: String) {
        guard let chat = conversation, let prompter, !generating, !text.isEmpty else { return }
        stopFlag.value = false
        let firstTurn = !chat.started
        messages += [Message(fromUser: true, text: text), Message(fromUser: false, text: "")]
        generating = true
        error = nil
        // first turn: preamble or system message + user turn + generation prompt; later: the rest of the turn
        let ids = prompter.ids(text, firstTurn: firstTurn, systemPrompt: systemPrompt)
        let tok = prompter.tokenizer
        let maxNew = maxNewTokens
        let flag = stopFlag
        Task.detached(priority: .userInitiated) { [weak self] in
            var decoder = tok.streamDecoder()
            do {
                let result = try chat.generate(prompt: ids, maxNewTokens: maxNew, shouldStop: { flag.value }) { token in
                    let piece = decoder.push(token)
                    if !piece.isEmpty { Task { @MainActor in self?.append(piece) } }
                }
                let tail = decoder.flush()
                let s = result.stats
                let line = String(
                    format: "prefill %.1f tok/s, decode %.1f tok/s, %d tokens (%@)", s.prefillTokensPerSecond,
                    s.decodeTokensPerSecond, s.generatedTokens, s.stopReason.rawValue)
                await MainActor.run {
                    self?.append(tail)
                    self?.stats = line
                    self?.generating = false
                    self?.memory = self?.memoryLine() ?? ""
                }
            } catch {
                await MainActor.run {
                    self?.error = "\(error)"
                    self?.generating = false
                }
            }
        }
    }

    private func append(_ piece: String) {
        guard !piece.isEmpty, !messages.isEmpty else { return }
        messages[messages.count - 1].text += piece
        memory = memoryLine()
    }

    func stop() { stopFlag.value = true }

    func newChat() {
        guard !generating else { return }
        try? conversation?.reset()
        messages = []
        stats = ""
        memory = memoryLine()
    }
}

/// A flag the generation thread reads while the UI sets it.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    var value: Bool {
        get { lock.withLock { flag } }
        set { lock.withLock { flag = newValue } }
    }
}
