import CoreML
import Foundation
import OmniCoderCore
#if canImport(UIKit)
import UIKit
#endif

struct Message: Identifiable {
    let id = UUID()
    let fromUser: Bool
    var text: String
}

/// Loads the chosen bundle (after checking that weights + KV fit), holds the conversation (KV cache reused across
/// turns, turns formatted by the bundle's chat format), streams tokens to the view, runs the benchmark and reacts to
/// memory warnings.
@MainActor
final class ChatModel: ObservableObject {
    @Published var status = "loading"
    @Published var ready = false
    @Published var generating = false
    @Published var messages: [Message] = []
    @Published var stats = ""
    @Published var memory = ""
    @Published var memoryCheck = ""
    @Published var benchmark = ""
    @Published var error: String?
    @Published private(set) var settings = AppSettings.load()
    @Published private(set) var bundles: [String] = []

    private var conversation: Conversation?
    private var session: ModelSession?
    private var prompter: ChatPrompter?
    private var pagingNote = ""
    private let stopFlag = StopFlag()
    private var released = false
    private var observers: [NSObjectProtocol] = []

    init() {
        #if canImport(UIKit)
        let center = NotificationCenter.default
        observers.append(
            center.addObserver(forName: UIApplication.didReceiveMemoryWarningNotification, object: nil, queue: .main) {
                [weak self] _ in
                Task { @MainActor in
                    let background = UIApplication.shared.applicationState == .background
                    self?.onMemoryPressure(PressureAction.forMemoryWarning(inBackground: background))
                }
            })
        observers.append(
            center.addObserver(forName: UIApplication.willEnterForegroundNotification, object: nil, queue: .main) {
                [weak self] _ in
                Task { @MainActor in if self?.released == true { await self?.load() } }
            })
        #endif
    }

    func load() async {
        release(status: "loading")
        bundles = BundleLocator.names()
        do {
            let name = settings.bundle
            let bundle = try await Task.detached(priority: .userInitiated) { try BundleLocator.verifiedBundle(named: name) }.value
            let check = memoryCheck(for: bundle)
            memoryCheck = check.summary()
            guard check.loadable() else { throw BundleError(kind: .invalid, message: "not loaded: \(check.summary())") }
            let (policy, note) = try MemoryInfo.policy(for: bundle)
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
            let prompter = try bundle.prompter()  // the bundle's chat format, plain text without one
            self.session = session
            self.prompter = prompter
            conversation = try newConversation(session, prompter)
            let chat = prompter.format != nil ? "chat format" : "plain text (no chat format in the bundle)"
            status = "\(bundle.manifest.model.name) ready (\(chat))"
            ready = true
            error = nil
            memory = memoryLine()
        } catch {
            status = "no model"
            self.error = "\(error)"
        }
    }

    /// Weights (graph and Core ML packages) + overhead + KV for the context against what iOS still gives the app.
    private func memoryCheck(for bundle: OmniCoderCore.Bundle) -> MemoryCheck {
        let coreml = bundle.manifest.graph["coreml"] as? [String: Any] ?? [:]
        let packages = (coreml["packages"] as? [String: Any] ?? [:]).values.compactMap { ($0 as? [String: Any])?["file"] as? String }
        let weights = MemoryCheck.weightsBytes(bundle.manifest, extraGraphFiles: packages)
        let context = coreml["max_seq_len"] as? Int ?? bundle.manifest.model.contextLength
        let perToken = (try? bundle.kvLayout().bytesPerToken()) ?? 0
        return MemoryCheck(
            weightsBytes: weights, kvBytesPerToken: perToken, contextTokens: context, availableBytes: MemoryInfo.availableBytes())
    }

    /// At temperature 0 the conversation verifies n-gram drafts (same tokens as plain greedy, fewer model calls).
    private func newConversation(_ session: ModelSession, _ prompter: ChatPrompter) throws -> Conversation {
        Conversation(
            session: session, sampler: try Sampler(settings.sampling()), stopIds: prompter.tokenizer.stopIds,
            feedStopToken: prompter.feedsStopToken, maxDraft: CoreMLSessionFactory.maxDraft)
    }

    private func memoryLine() -> String {
        let streaming = session as? StreamingSession
        let kv = Double(streaming?.residentKvBytes() ?? 0) / 1_048_576
        let evicted = streaming?.retention != nil ? ", \(streaming?.evictedTokens ?? 0) tokens evicted" : ""
        let available = Double(MemoryInfo.availableBytes()) / 1_048_576
        return String(format: "footprint %.0f MB, KV %.2f MB, %.0f MB available", MemoryInfo.footprintMB(), kv, available)
            + evicted + ". " + pagingNote
    }

    func send(_ text: String) {
        guard let chat = conversation, let prompter, !generating, !text.isEmpty else { return }
        stopFlag.value = false
        let firstTurn = !chat.started
        messages += [Message(fromUser: true, text: text), Message(fromUser: false, text: "")]
        generating = true
        error = nil
        // first turn: preamble or system message + user turn + generation prompt; later: the rest of the turn
        let ids = prompter.ids(text, firstTurn: firstTurn, systemPrompt: settings.systemPrompt)
        let tok = prompter.tokenizer
        let maxNew = settings.maxTokens
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
                    format: "TTFT %.0f ms, prefill %.1f tok/s, decode %.1f tok/s, %d tokens (%@)", s.prefillSeconds * 1000,
                    s.prefillTokensPerSecond, s.decodeTokensPerSecond, s.generatedTokens, s.stopReason.rawValue)
                    + (s.draftTokens > 0
                        ? String(
                            format: ", n-gram drafts %d/%d accepted, %.2f tokens/call", s.acceptedTokens, s.draftTokens,
                            s.tokensPerCall) : "")
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
        guard !generating, let session, let prompter else { return }
        try? conversation?.reset()
        conversation = try? newConversation(session, prompter)  // picks up changed sampling settings
        messages = []
        stats = ""
        memory = memoryLine()
    }

    /// Save settings; another bundle is loaded, new sampling settings start with the next chat.
    func update(_ new: AppSettings) async {
        do {
            try new.validate()
        } catch {
            self.error = "\(error)"
            return
        }
        let old = settings
        settings = new
        new.save()
        if new.bundle != old.bundle {
            await load()
        } else if new.sampling(seed: 0) != old.sampling(seed: 0) {
            newChat()
        }
    }

    func importBundle(_ url: URL) async {
        guard !generating else { return }
        status = "importing \(url.lastPathComponent)"
        do {
            let name = try await Task.detached(priority: .userInitiated) { try BundleLocator.importFolder(url) }.value
            bundles = BundleLocator.names()
            var s = settings
            s.bundle = name
            await update(s)
        } catch {
            status = "import failed"
            self.error = "\(error)"
        }
    }

    /// Fixed benchmark: 3 runs (the first a warm-up) of a ~100-token prompt and 64 generated tokens.
    func runBenchmark() {
        guard let session, let prompter, !generating else { return }
        stopFlag.value = false
        generating = true
        messages = []
        benchmark = "running..."
        let tok = prompter.tokenizer
        let flag = stopFlag
        Task.detached(priority: .userInitiated) { [weak self] in
            let prompt = tok.encode(ChatModel.benchPrompt, addBos: tok.addsBos)
            let line: String
            do {
                let result = try Benchmark.run(
                    session: session, prompt: prompt, genTokens: 64, runs: 3, memory: { MemoryInfo.footprintBytes() },
                    shouldStop: { flag.value })
                line = "\(prompt.count)-token prompt: \(result.summary())"
            } catch {
                line = "failed: \(error)"
            }
            await MainActor.run {
                self?.benchmark = line
                self?.generating = false
                self?.newChat()  // the benchmark reset the session
            }
        }
    }

    /// Memory warning: stop and drop the KV cache (a new chat), or release the model in the background.
    func onMemoryPressure(_ action: PressureAction) {
        guard action != .none else { return }
        stop()
        Task { @MainActor in
            while generating { try? await Task.sleep(nanoseconds: 20_000_000) }
            if action == .releaseModel {
                release(status: "model released to free memory (in the background); it reloads when you return")
                released = true
            } else {
                newChat()
                error = "memory is low: the conversation was cleared to free its KV cache"
            }
        }
    }

    private func release(status: String) {
        session = nil
        conversation = nil
        prompter = nil
        ready = false
        released = false
        messages = []
        self.status = status
    }

    nonisolated static let benchPrompt =
        "Write a Python function that parses a CSV file with a header row, converts the numeric columns to floats, "
        + "skips malformed lines with a warning, and returns a list of dictionaries. Add type hints, a docstring and "
        + "two doctest examples, then explain the edge cases it handles in three sentences."
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
