import Foundation
import XCTest

@testable import OmniCoderCore

/// What the vectors do not cover: SHA-256, symlinks, target checks, stopping, a full context, bounded paged memory.
final class CoreTests: XCTestCase {
    private func copyGood() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("omnicoder-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Vectors.dir.appendingPathComponent("bundles/good"), to: dir)
        return dir
    }

    private func expectKind(_ kind: BundleErrorKind, _ block: () throws -> Void) {
        do {
            try block()
            XCTFail("expected \(kind)")
        } catch let error as BundleError {
            XCTAssertEqual(error.kind, kind)
        } catch {
            XCTFail("unexpected \(error)")
        }
    }

    func testSHA256Hasher() {
        let empty = SHA256Hasher()
        XCTAssertEqual(empty.hexDigest(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let abc = SHA256Hasher()
        abc.update(Array("ab".utf8))
        abc.update(Array("c".utf8))
        XCTAssertEqual(abc.hexDigest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let long = SHA256Hasher()
        for _ in 0..<1000 { long.update(Array(repeating: UInt8(ascii: "a"), count: 1000)) }
        XCTAssertEqual(long.hexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testSymlinkOutOfTheBundleIsRejected() throws {
        let dir = try copyGood()
        defer { try? FileManager.default.removeItem(at: dir) }
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent("outside-\(UUID().uuidString).onnx")
        try FileManager.default.copyItem(at: dir.appendingPathComponent("model.onnx"), to: outside)
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.onnx"))
        try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent("model.onnx"), withDestinationURL: outside)
        expectKind(.path) { _ = try BundleReader.open(dir) }
    }

    func testTargetIsChecked() throws {
        let dir = try copyGood()
        defer { try? FileManager.default.removeItem(at: dir) }
        let bundle = try BundleReader.open(dir)
        XCTAssertNoThrow(try bundle.requireTarget("onnx"))
        expectKind(.target) { try bundle.requireTarget("coreml") }
        expectKind(.notFound) { _ = try BundleReader.open(dir.appendingPathComponent("nope")) }
        try Data("{not json".utf8).write(to: dir.appendingPathComponent("manifest.json"))
        expectKind(.invalid) { _ = try BundleReader.open(dir) }
    }

    func testStopKeepsThePendingTokenForTheNextTurn() throws {
        let session = FakeSession(contextLength: 64, vocab: 272)
        let chat = Conversation(session: session, sampler: try Sampler(SamplingParams(temperature: 0)), eosId: -1)
        var seen = 0
        let first = try chat.generate(prompt: [256, 1, 2], maxNewTokens: 50, shouldStop: { seen >= 3 }) { _ in seen += 1 }
        XCTAssertEqual(first.stats.stopReason, .stopped)
        XCTAssertEqual(first.tokens.count, 3)
        XCTAssertEqual(chat.pending, first.tokens.last)
        XCTAssertEqual(session.cacheLength, 5)
        _ = try chat.generate(prompt: [9], maxNewTokens: 1)
        XCTAssertEqual(session.calls.last, [2, 5])
    }

    func testFullContextIsAnError() throws {
        let chat = Conversation(
            session: FakeSession(contextLength: 8, vocab: 272), sampler: try Sampler(SamplingParams(temperature: 0)), eosId: -1)
        XCTAssertEqual(try chat.generate(prompt: [256, 1, 2], maxNewTokens: 50).stats.stopReason, .context)
        XCTAssertThrowsError(try chat.generate(prompt: [3], maxNewTokens: 5)) { XCTAssertTrue($0 is ContextFullError) }
        try chat.reset()
        XCTAssertNil(chat.pending)
        XCTAssertEqual(try chat.generate(prompt: [256], maxNewTokens: 50).stats.stopReason, .context)
    }

    func testWindowedStoreKeepsMemoryBounded() throws {
        let kv: [String: Any] = [
            "layout": "BNSH", "kind": "gqa", "heads": 2, "key_dim": 4, "value_dim": 4,
            "past_key": "past_key_values.{layer}.key", "past_value": "past_key_values.{layer}.value",
            "present_key": "present.{layer}.key", "present_value": "present.{layer}.value",
        ]
        let layout = try KvLayout(kv: kv, nLayers: 2)
        let store = PagedKvStore(layout: layout, policy: PagingPolicy(pageLen: 4, window: 8, sinkPages: 1))
        store.update(Vectors.fakePresents(layout, start: 0, count: 10), newTokens: 10)
        for _ in 0..<100 { store.update(Vectors.fakePresents(layout, start: store.length, count: 1, leading: 3), newTokens: 1) }
        let pageBytes = layout.inputs.indices.reduce(0) { $0 + 2 * 4 * layout.rowBytes($1) }
        XCTAssertLessThanOrEqual(store.residentPages(), 5)
        XCTAssertEqual(store.residentPages() * pageBytes, store.residentBytes())
        let fed = Vectors.fedTokens(try XCTUnwrap(store.feeds()["past_key_values.1.value"]))
        XCTAssertEqual(Array(fed.prefix(4)), [0, 1, 2, 3])
        XCTAssertEqual(fed.last, store.length - 1)
    }

    func testSamplerRejectsBadParameters() {
        for params in [SamplingParams(temperature: -1), SamplingParams(topK: -1), SamplingParams(topP: 0)] {
            XCTAssertThrowsError(try Sampler(params))
        }
    }
}
