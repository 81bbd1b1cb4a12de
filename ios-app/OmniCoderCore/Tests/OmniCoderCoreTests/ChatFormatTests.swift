import Foundation
import XCTest

@testable import OmniCoderCore

/// A model that answers with a script, token by token, and records every token it is fed.
final class ScriptedSession: ModelSession {
    let contextLength = 1 << 16
    private(set) var cacheLength = 0
    let vocab: Int
    var fed: [Int] = []
    var script: [Int] = []

    init(vocab: Int) { self.vocab = vocab }

    func reset() { cacheLength = 0 }

    func step(ids: [Int], positions: [Int]) -> [Float] {
        XCTAssertEqual(positions, Array(cacheLength..<(cacheLength + ids.count)))
        fed += ids
        cacheLength += ids.count
        var logits = [Float](repeating: 0, count: vocab)
        logits[script.removeFirst()] = 1
        return logits
    }
}

/// Chat formatting against tests/vectors/chat_format.json (Python's ChatSession over the rendered template).
final class ChatFormatTests: XCTestCase {
    private func tokenizer(_ c: [String: Any]) throws -> BundleHfTokenizer {
        let file = Vectors.dir.appendingPathComponent(try XCTUnwrap(c["tokenizer"] as? String))
        let hf = try HfTokenizer(json: Data(contentsOf: file))
        return BundleHfTokenizer(
            hf: hf, bosId: try XCTUnwrap(c["bos_id"] as? Int), eosId: try XCTUnwrap(c["eos_id"] as? Int),
            addsBos: try XCTUnwrap(c["add_bos"] as? Bool), stopIds: Vectors.ints(c["stop_ids"]))
    }

    private func cases() throws -> [[String: Any]] { try Vectors.cases(try Vectors.load("chat_format.json"), "cases") }

    func testConversationsFeedWhatPythonFeeds() throws {
        var turns = 0
        for c in try cases() {
            let tok = try tokenizer(c)
            guard let format = try ChatFormat.from(json: c["chat_format"]) else {
                XCTAssertEqual((c["conversations"] as? [Any])?.count, 0)
                continue
            }
            let prompter = ChatPrompter(tokenizer: tok, format: format)
            XCTAssertFalse(prompter.feedsStopToken)
            for conv in try Vectors.cases(c, "conversations") {
                let system = conv["system"] as? String
                let session = ScriptedSession(vocab: tok.vocabSize)
                let chat = Conversation(
                    session: session, sampler: try Sampler(SamplingParams(temperature: 0)), stopIds: tok.stopIds,
                    feedStopToken: prompter.feedsStopToken)
                for (k, turn) in try Vectors.cases(conv, "turns").enumerated() {
                    let name = "\(c["name"] ?? "?") system=\(system != nil) turn \(k)"
                    let reply = Vectors.ints(turn["reply_ids"])
                    let stop = turn["stop_id"] as? Int
                    session.script = reply + (stop.map { [$0] } ?? [])
                    session.fed = []
                    let ids = prompter.ids(try XCTUnwrap(turn["user"] as? String), firstTurn: !chat.started, systemPrompt: system)
                    let result = try chat.generate(prompt: ids, maxNewTokens: reply.count + (stop == nil ? 0 : 1))
                    XCTAssertEqual(result.tokens, reply, name)
                    XCTAssertEqual(result.stats.stopReason, stop == nil ? .limit : .eos, name)
                    XCTAssertEqual(session.fed, Vectors.ints(turn["fed"]), name)
                    turns += 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(turns, 24)
        print("chat format vectors: \(turns) turns")
    }

    func testTrimStripsWhatPythonStrips() throws {
        for c in try Vectors.cases(try Vectors.load("chat_format.json"), "strip") {
            let got = ChatFormat.pyStrip(try XCTUnwrap(c["text"] as? String))
            XCTAssertEqual(Array(got.utf16), Array(try XCTUnwrap(c["stripped"] as? String).utf16))
        }
        let trimmed = ChatFormat(
            preamble: "", system: nil, user: RolePiece(prefix: "[u]", suffix: "|"),
            assistant: RolePiece(prefix: "[a]", suffix: "|"), generationPrompt: "[a]", trim: true)
        XCTAssertEqual(trimmed.firstTurn("\u{a0} hi\n"), "[u]hi|[a]")
    }

    func testEveryStopIdEndsATurn() throws {
        let tok = try tokenizer(try XCTUnwrap(try cases().first))
        XCTAssertGreaterThanOrEqual(tok.stopIds.count, 2)
        for stop in tok.stopIds {
            let session = ScriptedSession(vocab: tok.vocabSize)
            session.script = [300, stop, 301]
            let chat = Conversation(
                session: session, sampler: try Sampler(SamplingParams(temperature: 0)), stopIds: tok.stopIds,
                feedStopToken: false)
            let result = try chat.generate(prompt: [5, 6], maxNewTokens: 10)
            XCTAssertEqual(result.tokens, [300])
            XCTAssertEqual(result.stats.stopReason, .eos)
        }
    }

    func testWithoutAFormatTheUserTextIsThePromptAndBosOnlyWhenTheTokenizerAddsOne() throws {
        let c = try XCTUnwrap(try cases().first { $0["name"] as? String == "bos-first" })
        let adds = try tokenizer(c)
        let plain = ChatPrompter(tokenizer: adds, format: nil)
        XCTAssertTrue(plain.feedsStopToken)
        XCTAssertEqual(plain.ids("hi", firstTurn: true).first, 3)
        XCTAssertEqual(plain.ids("hi", firstTurn: false), adds.encode("\nhi"))
        let noBos = BundleHfTokenizer(hf: adds.hf, bosId: 3, eosId: 2, addsBos: false, stopIds: [2])
        XCTAssertEqual(ChatPrompter(tokenizer: noBos, format: nil).ids("hi", firstTurn: true), noBos.encode("hi"))
        let bytes = ByteTokenizer()
        XCTAssertEqual(ChatPrompter(tokenizer: bytes, format: nil).ids("hi", firstTurn: true).first, bytes.bosId)
    }

    func testATemplateWithoutSystemMessagesGetsTheSystemTextInTheUserTurn() {
        let format = ChatFormat(
            preamble: "<s>", system: nil, user: RolePiece(prefix: "[u]", suffix: "\n"),
            assistant: RolePiece(prefix: "[a]", suffix: "\n"), generationPrompt: "[a]")
        XCTAssertEqual(format.firstTurn("hi", systemPrompt: "Be brief."), "<s>[u]Be brief.\n\nhi\n[a]")
        XCTAssertEqual(format.firstTurn("hi", systemPrompt: ""), "<s>[u]hi\n[a]")
        XCTAssertEqual(format.nextTurn("more"), "\n[u]more\n[a]")
    }

    func testASmolLM2BundleWithAChatFormatIsAccepted() throws {
        let c = try XCTUnwrap(try cases().first { $0["name"] as? String == "smollm2" })
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("chat-bundle-\(UUID().uuidString)")
        try fm.copyItem(at: Vectors.dir.appendingPathComponent("bundles/good"), to: dir)
        defer { try? fm.removeItem(at: dir) }
        let tokURL = dir.appendingPathComponent("tokenizer.json")
        try fm.removeItem(at: tokURL)
        try fm.copyItem(at: Vectors.dir.appendingPathComponent(try XCTUnwrap(c["tokenizer"] as? String)), to: tokURL)
        let manifestURL = dir.appendingPathComponent("manifest.json")
        var manifest = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: manifestURL)) as? [String: Any])
        var model = try XCTUnwrap(manifest["model"] as? [String: Any])
        model["vocab_size"] = 2560
        model["bos_id"] = -1
        model["eos_id"] = 0
        manifest["model"] = model
        var section: [String: Any] = [
            "file": "tokenizer.json", "type": "huggingface", "add_bos": false, "stop_ids": Vectors.ints(c["stop_ids"]),
            "chat_format": try XCTUnwrap(c["chat_format"]),
        ]
        manifest["tokenizer"] = section
        var files = try XCTUnwrap(manifest["files"] as? [String: Any])
        files["tokenizer.json"] = ["sha256": try FileDigest.sha256Hex(of: tokURL), "bytes": try Data(contentsOf: tokURL).count]
        manifest["files"] = files
        func write() throws { try JSONSerialization.data(withJSONObject: manifest).write(to: manifestURL) }
        try write()
        let prompter = try BundleReader.open(dir).prompter()
        let first = try XCTUnwrap(try Vectors.cases(try XCTUnwrap(try Vectors.cases(c, "conversations").first), "turns").first)
        let ids = prompter.ids(try XCTUnwrap(first["user"] as? String), firstTurn: true)
        XCTAssertEqual(ids, Array(Vectors.ints(first["fed"]).prefix(ids.count)))
        section["chat_format"] = ["preamble": ""]
        manifest["tokenizer"] = section
        try write()
        XCTAssertThrowsError(try BundleReader.open(dir)) { XCTAssertEqual(($0 as? BundleError)?.kind, .invalid) }
        section["chat_format"] = nil
        manifest["tokenizer"] = section
        try write()
        XCTAssertNil(try BundleReader.open(dir).prompter().format)
    }
}
