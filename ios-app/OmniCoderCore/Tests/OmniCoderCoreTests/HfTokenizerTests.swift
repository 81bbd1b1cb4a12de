import Foundation
import XCTest

@testable import OmniCoderCore

/// The tokenizer.json tokenizer against tests/vectors/hf_tokenizer.json (the `tokenizers` library's answers).
/// Texts are compared as UTF-16 code units, never with Swift's `==` (canonical equivalence would hide NFC bugs).
final class HfTokenizerTests: XCTestCase {
    func testVectors() throws {
        let data = try Vectors.load("hf_tokenizer.json")
        let counts = try check(data, base: Vectors.dir)
        XCTAssertEqual(counts.tokenizers, (data["tokenizers"] as? [Any])?.count)
        XCTAssertGreaterThan(counts.encodes, 4000)
        print("hf tokenizer vectors: \(counts)")
    }

    /// `OMNICODER_HF_VECTORS=FILE`: the same checks on `gen_hf_tokenizer.py --real TOKENIZER_JSON` output.
    func testRealTokenizerVectors() throws {
        guard let path = ProcessInfo.processInfo.environment["OMNICODER_HF_VECTORS"] else { return }
        let url = URL(fileURLWithPath: path)
        let data = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let counts = try check(data, base: url.deletingLastPathComponent())
        print("hf tokenizer vectors (\(path)): \(counts)")
    }

    func testRefusesKindsItDoesNotImplement() throws {
        let refused = try Vectors.cases(try Vectors.load("hf_tokenizer.json"), "refused")
        for c in refused {
            let name = c["name"] as? String ?? "?"
            let word = try XCTUnwrap(c["error_names"] as? String)
            do {
                _ = try HfTokenizer(spec: try XCTUnwrap(c["tokenizer"] as? [String: Any]))
                XCTFail("\(name) was accepted")
            } catch let error as TokenizerError {
                XCTAssertTrue(error.message.contains(word), "\(name): '\(error.message)' does not name \(word)")
            }
        }
        print("hf tokenizer refusals: \(refused.count)")
    }

    func testBundleWithHuggingFaceTokenizerIsAccepted() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("hf-bundle-\(UUID().uuidString)")
        try fm.copyItem(at: Vectors.dir.appendingPathComponent("bundles/good"), to: dir)
        defer { try? fm.removeItem(at: dir) }
        let tokURL = dir.appendingPathComponent("tokenizer.json")
        try fm.removeItem(at: tokURL)
        try fm.copyItem(at: Vectors.dir.appendingPathComponent("hf_tokenizers/gguf.json"), to: tokURL)
        let tokData = try Data(contentsOf: tokURL)
        var manifest = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("manifest.json")))
                as? [String: Any])
        var model = try XCTUnwrap(manifest["model"] as? [String: Any])
        model["vocab_size"] = 2560
        model["bos_id"] = 1
        model["eos_id"] = 2
        manifest["model"] = model
        manifest["tokenizer"] = ["file": "tokenizer.json", "type": "huggingface", "add_bos": false, "stop_ids": [0, 2]]
        var files = try XCTUnwrap(manifest["files"] as? [String: Any])
        files["tokenizer.json"] = ["sha256": try FileDigest.sha256Hex(of: tokURL), "bytes": tokData.count]
        manifest["files"] = files
        func write() throws {
            try JSONSerialization.data(withJSONObject: manifest).write(to: dir.appendingPathComponent("manifest.json"))
        }
        try write()
        let tok = try BundleReader.open(dir).tokenizer()
        let hf = try XCTUnwrap(tok as? BundleHfTokenizer).hf
        XCTAssertEqual(tok.stopIds, [0, 2])
        XCTAssertFalse(tok.addsBos)
        let text = "<|im_start|>user\nhi<|im_end|>"
        let ids = tok.encode(text, addBos: true)
        XCTAssertEqual(ids, [1] + hf.encode(text))
        XCTAssertEqual(Array(tok.decode(ids).utf16), Array("user\nhi".utf16))
        model["vocab_size"] = 100
        manifest["model"] = model
        try write()
        XCTAssertThrowsError(try BundleReader.open(dir).tokenizer()) { error in
            XCTAssertEqual((error as? BundleError)?.kind, .invalid)
        }
    }

    struct Counts: CustomStringConvertible {
        var tokenizers = 0, encodes = 0, decodes = 0, streams = 0
        var description: String { "tokenizers=\(tokenizers), encodes=\(encodes), decodes=\(decodes), streams=\(streams)" }
    }

    private func check(_ data: [String: Any], base: URL) throws -> Counts {
        let texts = try XCTUnwrap(data["texts"] as? [String])
        var counts = Counts()
        var failures: [String] = []
        func same(_ a: String, _ b: String) -> Bool { Array(a.utf16) == Array(b.utf16) }
        for t in try Vectors.cases(data, "tokenizers") {
            let name = t["name"] as? String ?? "?"
            let file = try XCTUnwrap(t["file"] as? String)
            let url = file.hasPrefix("/") ? URL(fileURLWithPath: file) : base.appendingPathComponent(file)
            let tok = try HfTokenizer(json: Data(contentsOf: url))
            XCTAssertEqual(tok.vocabSize, t["vocab_size"] as? Int, name)
            counts.tokenizers += 1
            let encode = try XCTUnwrap(t["encode"] as? [Any])
            let encodeSpecial = try XCTUnwrap(t["encode_special"] as? [Any])
            let decode = try XCTUnwrap(t["decode"] as? [Any])
            let decodeSkip = try XCTUnwrap(t["decode_skip"] as? [Any])
            for (i, text) in texts.enumerated() {
                let ids = Vectors.ints(encode[i])
                let special = encodeSpecial[i] is NSNull ? ids : Vectors.ints(encodeSpecial[i])
                let all = decode[i] as? String ?? text
                let skip = decodeSkip[i] as? String ?? all
                let got = tok.encode(text)
                if got != ids { failures.append("\(name) encode[\(i)] \(show(text)): \(ids) != \(got)") }
                if tok.encode(text, addSpecialTokens: true) != special { failures.append("\(name) encode_special[\(i)]") }
                let gotAll = tok.decode(ids, skipSpecialTokens: false)
                if !same(gotAll, all) { failures.append("\(name) decode[\(i)] \(show(all)) != \(show(gotAll))") }
                let gotSkip = tok.decode(ids, skipSpecialTokens: true)
                if !same(gotSkip, skip) { failures.append("\(name) decode_skip[\(i)] \(show(skip)) != \(show(gotSkip))") }
                counts.encodes += 2
                counts.decodes += 2
            }
            for s in try Vectors.cases(t, "stream") {
                let index = try XCTUnwrap(s["text"] as? Int)
                checkStream(tok, Vectors.ints(encode[index]), s, "\(name) stream[\(index)]", &failures)
                counts.streams += 1
            }
            for (k, r) in try Vectors.cases(t, "random_ids").enumerated() {
                let ids = Vectors.ints(r["ids"])
                let got = tok.decode(ids, skipSpecialTokens: false)
                if !same(got, r["text"] as? String ?? "") {
                    failures.append("\(name) random[\(k)] \(ids): \(show(r["text"] as? String ?? "")) != \(show(got))")
                }
                if !same(tok.decode(ids, skipSpecialTokens: true), r["text_skip"] as? String ?? "") {
                    failures.append("\(name) random_skip[\(k)]")
                }
                checkStream(tok, ids, r, "\(name) random stream[\(k)]", &failures)
                counts.decodes += 2
                counts.streams += 1
            }
        }
        if !failures.isEmpty {
            XCTFail("\(failures.count) mismatches:\n" + failures.prefix(15).joined(separator: "\n"))
        }
        return counts
    }

    private func checkStream(
        _ tok: HfTokenizer, _ ids: [Int], _ c: [String: Any], _ at: String, _ failures: inout [String]
    ) {
        var decoder = tok.streamDecoder()
        let pieces = ids.map { decoder.push($0) }
        let expected = c["pieces"] as? [String] ?? []
        let flushed = decoder.flush()
        let ok = pieces.count == expected.count && zip(pieces, expected).allSatisfy { Array($0.utf16) == Array($1.utf16) }
        if !ok || Array(flushed.utf16) != Array((c["flush"] as? String ?? "").utf16) {
            failures.append("\(at): \(expected.map(show)) != \(pieces.map(show))")
        }
    }

    private func show(_ s: String) -> String {
        "'" + s.unicodeScalars.map { (0x20...0x7E).contains($0.value) ? String($0) : "\\u{\(String($0.value, radix: 16))}" }
            .joined() + "'"
    }
}
