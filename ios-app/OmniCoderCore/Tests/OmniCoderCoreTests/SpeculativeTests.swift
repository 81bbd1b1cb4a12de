import Foundation
import XCTest

@testable import OmniCoderCore

/// The scripted model of speculative.json: its KV is a real `PagedKvStore` holding one fp32 row per token (the token
/// id), and each row's logits come from the rows the store feeds + the call's tokens, so a wrong rollback changes
/// what it says.
final class ScriptedKvSession: SpeculativeSession {
    let contextLength: Int
    private let vocab: Int
    private let period: Int
    private let layout: KvLayout
    let store: PagedKvStore
    var calls: [[Int]] = []  // [first position, ids...] per model call

    init(contextLength: Int, vocab: Int, period: Int, layout: KvLayout, policy: PagingPolicy, rollbackSlack: Int) {
        self.contextLength = contextLength
        self.vocab = vocab
        self.period = period
        self.layout = layout
        store = PagedKvStore(layout: layout, policy: policy)
        store.rollbackSlack = rollbackSlack
    }

    var cacheLength: Int { store.length }

    func reset() { store.reset() }

    func verify(ids: [Int], positions: [Int]) -> [[Float]] {
        calls.append([positions[0]] + ids)
        let name = layout.inputs[0]
        let fed = store.feeds()[name]!
        let seen = fed.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }.map { Int($0) }
        let history = seen + ids
        let rows = ids.indices.map { logits(Array(history[..<(seen.count + $0 + 1)]), positions[$0]) }
        let present = history.map { Float($0) }.withUnsafeBytes { Array($0) }
        store.update(
            [name: KvTensor(name: name, dtype: "float32", shape: [1, 1, history.count, 1], data: present)], newTokens: ids.count)
        return rows
    }

    func step(ids: [Int], positions: [Int]) -> [Float] { verify(ids: ids, positions: positions).last! }

    func truncate(_ length: Int) { store.truncate(length) }

    private func target(_ history: [Int], _ position: Int) -> Int {
        if position % period != period / 2 {
            for n in stride(from: 3, through: 1, by: -1) {
                let tail = Array(history[max(0, history.count - n)...])
                for j in 0..<max(0, history.count - n) where Array(history[j..<(j + n)]) == tail { return history[j + n] }
            }
        }
        let previous = history.count >= 2 ? history[history.count - 2] : 0
        return 1 + (history.last! * 7 + previous * 3 + position * 5) % (vocab - 2)
    }

    private func logits(_ history: [Int], _ position: Int) -> [Float] {
        let t = target(history, position)
        let h = (t * 131 + position * 31) % 100003
        var out = (0..<vocab).map { Float(Double((h + $0 * 7919) % 1000) / 100.0) }
        out[t] = Float(20.0 + Double(h % 7) / 4.0)
        return out
    }
}

/// speculative.json: the n-gram drafter step by step, and greedy runs with and without speculation.
final class SpeculativeTests: XCTestCase {
    func testNgramDrafterMatchesPython() throws {
        let vectors = try Vectors.load("speculative.json")
        var steps = 0
        for c in try Vectors.cases(vectors, "drafter") {
            let drafter = NgramDrafter(
                maxDraft: c["max_draft"] as! Int, maxNgram: c["max_ngram"] as! Int, minNgram: c["min_ngram"] as! Int,
                patience: c["patience"] as! Int)
            let tokens = Vectors.ints(c["tokens"])
            for (i, step) in try Vectors.cases(c, "steps").enumerated() {
                let where_ = "drafter max_draft=\(c["max_draft"]!) step \(i)"
                let proposal = drafter.propose(Array(tokens[..<(step["history"] as! Int)]), room: step["room"] as! Int)
                XCTAssertEqual(proposal, Vectors.ints(step["proposal"]), where_)
                drafter.observe(proposed: proposal.count, accepted: step["accepted"] as! Int)
                let state = [drafter.length, drafter.misses, drafter.pause, drafter.silent, drafter.indexed]
                XCTAssertEqual(state, Vectors.ints(step["state"]), where_)
                steps += 1
            }
        }
        XCTAssertGreaterThanOrEqual(steps, 300)
    }

    private func session(_ c: [String: Any], _ vectors: [String: Any]) throws -> ScriptedKvSession {
        let paging = c["paging"] as! [String: Any]
        let policy = PagingPolicy(
            pageLen: paging["page_len"] as! Int, window: paging["window"] as! Int, sinkPages: paging["sink_pages"] as! Int)
        let layout = try KvLayout(kv: vectors["kv"] as! [String: Any], nLayers: 1)
        return ScriptedKvSession(
            contextLength: c["context"] as! Int, vocab: c["vocab"] as! Int, period: c["period"] as! Int, layout: layout,
            policy: policy, rollbackSlack: c["k"] as! Int)
    }

    func testGreedyRunsMatchPythonWithAndWithoutDrafts() throws {
        let vectors = try Vectors.load("speculative.json")
        var turns = 0
        for c in try Vectors.cases(vectors, "runs") {
            let name = c["name"] as! String
            var produced: [String: [[Int]]] = [:]
            for mode in ["plain", "speculative"] {
                let session = try session(c, vectors)
                let chat = Conversation(
                    session: session, sampler: try Sampler(SamplingParams(temperature: 0, topK: 0, topP: 1)),
                    stopIds: Vectors.ints(c["stop_ids"]), feedStopToken: true, maxDraft: mode == "speculative" ? c["k"] as! Int : 0)
                XCTAssertEqual(chat.speculative != nil, mode == "speculative")
                let expected = try Vectors.cases(c, mode)
                var prompts = [Vectors.ints(c["prompt"])]
                if c["second_turn_prompt"] is [Any] { prompts.append(Vectors.ints(c["second_turn_prompt"])) }
                XCTAssertEqual(expected.count, prompts.count)
                var tokens: [[Int]] = []
                for (turn, want) in expected.enumerated() {
                    let where_ = "\(name) \(mode) turn \(turn)"
                    let before = session.calls.count
                    let result = try chat.generate(prompt: prompts[turn], maxNewTokens: c["max_new_tokens"] as! Int)
                    XCTAssertEqual(result.tokens, Vectors.ints(want["tokens"]), where_)
                    XCTAssertEqual(result.stats.stopReason.rawValue, want["stop_reason"] as? String, where_)
                    let wantCalls = (want["calls"] as! [Any]).map { Vectors.ints($0) }
                    XCTAssertEqual(Array(session.calls[before...]), wantCalls, where_)
                    XCTAssertEqual(result.stats.draftTokens, want["draft_tokens"] as? Int, where_)
                    XCTAssertEqual(result.stats.acceptedTokens, want["accepted_tokens"] as? Int, where_)
                    XCTAssertEqual(session.cacheLength, want["cache_length"] as? Int, where_)
                    if let pending = want["pending"] as? Int {
                        XCTAssertEqual(chat.pending, pending, where_)
                    } else {
                        XCTAssertTrue(chat.stopIds.contains(chat.pending ?? -1), where_)
                    }
                    tokens.append(result.tokens)
                    turns += 1
                }
                produced[mode] = tokens
            }
            if (c["paging"] as! [String: Any])["window"] as! Int == 0 {
                XCTAssertEqual(produced["plain"], produced["speculative"], name)
            }
        }
        XCTAssertGreaterThanOrEqual(turns, 18)
    }

    func testSamplingDecodesPlainly() throws {
        let vectors = try Vectors.load("speculative.json")
        let c = try Vectors.cases(vectors, "runs")[0]
        let chat = Conversation(
            session: try session(c, vectors), sampler: try Sampler(SamplingParams(temperature: 0.8, seed: 3)), stopIds: [47],
            feedStopToken: true, maxDraft: 8)
        XCTAssertNil(chat.speculative)
        let result = try chat.generate(prompt: Vectors.ints(c["prompt"]), maxNewTokens: 5)
        XCTAssertEqual(result.stats.draftTokens, 0)
        XCTAssertEqual(result.stats.modelCalls, 4)
    }

    func testPagedStoreRollsBackWithinTheSlack() throws {
        let kv: [String: Any] = [
            "heads": 2, "key_dim": 3, "value_dim": 3, "past_key": "k.{layer}", "past_value": "v.{layer}",
            "present_key": "pk.{layer}", "present_value": "pv.{layer}",
        ]
        let layout = try KvLayout(kv: kv, nLayers: 2)
        let policy = PagingPolicy(pageLen: 4, window: 8, sinkPages: 1)
        let store = PagedKvStore(layout: layout, policy: policy)
        store.rollbackSlack = 6
        store.update(Vectors.fakePresents(layout, start: 0, count: 10), newTokens: 10)
        for _ in 0..<30 {
            store.update(Vectors.fakePresents(layout, start: store.length, count: 7), newTokens: 7)  // a verify call of 7
            store.truncate(store.length - 6)  // ... that kept the first only
            let fresh = PagedKvStore(layout: layout, policy: policy)
            fresh.update(Vectors.fakePresents(layout, start: 0, count: store.length), newTokens: store.length)
            for name in layout.inputs {
                XCTAssertEqual(Vectors.fedTokens(store.feeds()[name]!), Vectors.fedTokens(fresh.feeds()[name]!))
            }
        }
        XCTAssertLessThanOrEqual(store.residentPages(), 6)
        store.truncate(0)
        XCTAssertEqual(store.length, 0)
        XCTAssertTrue(store.pages.isEmpty)
    }
}
