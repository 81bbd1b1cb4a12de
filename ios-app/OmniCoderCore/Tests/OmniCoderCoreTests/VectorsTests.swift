import Foundation
import XCTest

@testable import OmniCoderCore

/// The Swift core against tests/vectors/: the same answers as the Python runtime and the Kotlin core.
final class VectorsTests: XCTestCase {
    func testTokenizer() throws {
        let data = try Vectors.load("tokenizer.json")
        let spec = try JSONSerialization.data(withJSONObject: try XCTUnwrap(data["tokenizer_json"]))
        let tok = try ByteTokenizer.fromJSON(spec)
        XCTAssertEqual(tok, ByteTokenizer())
        for c in try Vectors.cases(data, "encode") {
            let units = Vectors.ints(c["utf16"]).map { UInt16($0) }
            let ids = Vectors.ints(c["ids"])
            let addBos = c["add_bos"] as? Bool ?? false
            XCTAssertEqual(tok.encode(utf16: units, addBos: addBos), ids)
            XCTAssertEqual(tok.decodeUTF16(ids), units)
            if let text = c["text"] as? String {
                XCTAssertEqual(tok.encode(text, addBos: addBos), ids)
                XCTAssertEqual(tok.decode(ids), text)
            }
        }
        for c in try Vectors.cases(data, "decode") {
            XCTAssertEqual(tok.decodeUTF16(Vectors.ints(c["ids"])), Vectors.ints(c["utf16"]).map { UInt16($0) })
        }
        for c in try Vectors.cases(data, "stream") {
            var decoder = tok.streamDecoder()
            let pieces = Vectors.ints(c["ids"]).map { decoder.push($0) }
            XCTAssertEqual(pieces, c["pieces"] as? [String], "\(c["ids"] ?? "")")
            XCTAssertEqual(decoder.flush(), c["flush"] as? String)
        }
    }

    func testSampling() throws {
        let data = try Vectors.load("sampling.json")
        for c in try Vectors.cases(data, "rng") {
            var rng = SplitMix64(seed: UInt64(try XCTUnwrap(c["seed"] as? Int)))
            for hex in try XCTUnwrap(c["u64"] as? [String]) { XCTAssertEqual(String(rng.next(), radix: 16).leftPadded(16), hex) }
        }
        let tolerance = try XCTUnwrap(data["probability_tolerance"] as? Double)
        for c in try Vectors.cases(data, "cases") {
            let params = SamplingParams(
                temperature: try XCTUnwrap(c["temperature"] as? Double), topK: try XCTUnwrap(c["top_k"] as? Int),
                topP: try XCTUnwrap(c["top_p"] as? Double), seed: UInt64(try XCTUnwrap(c["seed"] as? Int)))
            let logits = try XCTUnwrap(c["logits"] as? [Double]).map { Float($0) }
            let probs = try Sampler(params).probabilities(logits)
            let expected = try XCTUnwrap(c["probabilities"] as? [Double])
            for (p, e) in zip(probs, expected) { XCTAssertEqual(p, e, accuracy: tolerance) }
            let sampler = try Sampler(params)
            let tokens = Vectors.ints(c["tokens"])
            XCTAssertEqual(tokens.map { _ in sampler.sample(logits) }, tokens, "\(c["name"] ?? "")")
        }
    }

    func testKvLayout() throws {
        for c in try Vectors.cases(try Vectors.load("kv_layout.json"), "cases") {
            let layout = try KvLayout(kv: try XCTUnwrap(c["kv"] as? [String: Any]), nLayers: try XCTUnwrap(c["n_layers"] as? Int))
            XCTAssertEqual(layout.inputs, c["inputs"] as? [String])
            XCTAssertEqual(layout.outputs, c["outputs"] as? [String])
            XCTAssertEqual(layout.widths, Vectors.ints(c["widths"]))
            XCTAssertEqual(layout.dtypes, c["dtypes"] as? [String])
            XCTAssertEqual(layout.keySlots, c["key_slots"] as? [[String]])
            XCTAssertEqual(layout.bytesPerToken(), c["bytes_per_token"] as? Int)
            let budget = try PageBudget(sidecar: try XCTUnwrap(c["sidecar"] as? [String: Any]))
            XCTAssertEqual(budget.bytesPerToken, Double(try XCTUnwrap(c["bytes_per_token"] as? Int)))
        }
    }

    func testPaging() throws {
        let data = try Vectors.load("paging.json")
        for c in try Vectors.cases(data, "pages") {
            let layout = try KvLayout(kv: try XCTUnwrap(c["kv"] as? [String: Any]), nLayers: try XCTUnwrap(c["n_layers"] as? Int))
            let policy = PagingPolicy(
                pageLen: try XCTUnwrap(c["page_len"] as? Int), window: try XCTUnwrap(c["window"] as? Int),
                sinkPages: try XCTUnwrap(c["sink_pages"] as? Int))
            let store = PagedKvStore(layout: layout, policy: policy)
            for step in try Vectors.cases(c, "steps") {
                let feeds = store.feeds()
                let first = try XCTUnwrap(feeds[layout.inputs[0]])
                XCTAssertEqual(Vectors.fedTokens(first), Vectors.ints(step["fed_tokens"]))
                let count = try XCTUnwrap(step["new_tokens"] as? Int)
                store.update(Vectors.fakePresents(layout, start: store.length, count: count, leading: first.shape[2]), newTokens: count)
                XCTAssertEqual(store.length, step["length"] as? Int)
                XCTAssertEqual(store.pages.map { [$0.start, $0.filled] }, (step["pages"] as? [Any])?.map { Vectors.ints($0) })
                XCTAssertEqual(store.attendedPages(), Vectors.ints(step["attended"]))
                XCTAssertLessThanOrEqual(store.residentPages(), store.attendedPages().count + 1)
            }
        }
        for c in try Vectors.cases(data, "sizing") {
            let budget = try PageBudget(sidecar: try XCTUnwrap(c["sidecar"] as? [String: Any]))
            XCTAssertEqual(budget.pageBytes, c["page_bytes"] as? Int)
            let plan = PagingPlan.plan(
                budget, context: try XCTUnwrap(c["context"] as? Int), budgetBytes: try XCTUnwrap(c["budget_bytes"] as? Int),
                modelContext: c["model_context"] as? Int)
            guard let expected = c["plan"] as? [String: Any] else {
                XCTAssertNil(plan)
                continue
            }
            let got = try XCTUnwrap(plan)
            XCTAssertEqual(got.fitsWhole, expected["fits_whole"] as? Bool)
            XCTAssertEqual(got.window, expected["window"] as? Int)
            XCTAssertEqual(got.sinkPages, expected["sink_pages"] as? Int)
            XCTAssertEqual(got.predictedPages, expected["predicted_pages"] as? Int)
            XCTAssertEqual(got.residentPages, expected["resident_pages"] as? Int)
            XCTAssertEqual(got.residentBytes, expected["resident_bytes"] as? Int)
            XCTAssertEqual(got.totalBytes, expected["total_bytes"] as? Int)
            XCTAssertEqual(got.spillBytes, expected["spill_bytes"] as? Int)
        }
    }

    func testDecodeLoop() throws {
        for c in try Vectors.cases(try Vectors.load("decode_loop.json"), "cases") {
            let name = c["name"] as? String ?? ""
            let session = FakeSession(contextLength: try XCTUnwrap(c["context"] as? Int), vocab: try XCTUnwrap(c["vocab"] as? Int))
            let s = try XCTUnwrap(c["sampling"] as? [String: Any])
            let params = SamplingParams(
                temperature: try XCTUnwrap(s["temperature"] as? Double), topK: try XCTUnwrap(s["top_k"] as? Int),
                topP: try XCTUnwrap(s["top_p"] as? Double), seed: UInt64(try XCTUnwrap(s["seed"] as? Int)))
            let chat = Conversation(session: session, sampler: try Sampler(params), eosId: try XCTUnwrap(c["eos_id"] as? Int))
            let maxNew = try XCTUnwrap(c["max_new_tokens"] as? Int)
            var streamed: [Int] = []
            let first = try chat.generate(prompt: Vectors.ints(c["prompt"]), maxNewTokens: maxNew) { streamed.append($0) }
            XCTAssertEqual(first.tokens, Vectors.ints(c["tokens"]), name)
            XCTAssertEqual(streamed, first.tokens)
            XCTAssertEqual(first.stats.stopReason.rawValue, c["stop_reason"] as? String, name)
            XCTAssertEqual(session.calls, (c["calls"] as? [Any])?.map { Vectors.ints($0) })
            guard let follow = c["continuation"] as? [String: Any] else { continue }
            XCTAssertEqual(chat.pending, follow["pending"] as? Int)
            session.calls = []
            let more = try chat.generate(prompt: Vectors.ints(follow["prompt"]), maxNewTokens: maxNew)
            XCTAssertEqual(more.tokens, Vectors.ints(follow["tokens"]), name)
            XCTAssertEqual(more.stats.stopReason.rawValue, follow["stop_reason"] as? String)
            XCTAssertEqual(session.calls, (follow["calls"] as? [Any])?.map { Vectors.ints($0) })
        }
    }

    func testBundles() throws {
        for c in try Vectors.cases(try Vectors.load("bundles.json"), "cases") {
            let name = try XCTUnwrap(c["name"] as? String)
            let expect = try XCTUnwrap(c["expect"] as? String)
            do {
                let bundle = try BundleReader.open(Vectors.dir.appendingPathComponent("bundles/\(name)"))
                XCTAssertEqual(expect, "ok", name)
                XCTAssertEqual(try bundle.tokenizer().encode("a"), [97])
                XCTAssertEqual(try bundle.sidecar("kv_paging")?["page_len"] as? Int, 16)
                XCTAssertEqual(try bundle.kvLayout().inputs, ["past_key_values.0.key", "past_key_values.1.key"])
            } catch let error as BundleError {
                XCTAssertEqual(error.kind.rawValue, expect, "\(name): \(error)")
            }
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
