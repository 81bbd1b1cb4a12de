import Foundation
import XCTest

@testable import OmniCoderCore

/// The retention store, its policy and fp16 / NF4 / u8 helpers against tests/vectors/retention.json, bit for bit.
final class RetentionTests: XCTestCase {
    private var data: [String: Any] = [:]

    override func setUpWithError() throws { data = try Vectors.load("retention.json") }

    func testFp16MatchesNumpy() throws {
        let fp16 = try XCTUnwrap(data["fp16"] as? [String: Any])
        let values = try floats(fp16["values"])
        let text = Array(try XCTUnwrap(fp16["half_bits"] as? String))
        let halves = stride(from: 0, to: text.count, by: 4).map { UInt16(String(text[$0..<($0 + 4)]), radix: 16)! }
        let expected = try floats(fp16["expected"])
        for i in values.indices {
            XCTAssertEqual(Fp16.bits(values[i]), halves[i], "value \(values[i])")
            XCTAssertEqual(Fp16.round(values[i]).bitPattern, expected[i].bitPattern, "value \(values[i])")
        }
    }

    func testRoundTripsMatchNumpy() throws {
        XCTAssertEqual(try floats(data["nf4_levels"]).map(\.bitPattern), KvCompress.nf4Levels.map(\.bitPattern))
        XCTAssertEqual(try floats(data["nf4_midpoints"]).map(\.bitPattern), KvCompress.nf4Midpoints.map(\.bitPattern))
        for c in try Vectors.cases(data, "round_trips") {
            let values = try floats(c["rows"])
            let width = try XCTUnwrap(c["width"] as? Int)
            let codec = try KvCompress(dtype: try XCTUnwrap(c["dtype"] as? String), group: try XCTUnwrap(c["group"] as? Int))
            let out = codec.roundTrip(values, rows: values.count / width, width: width)
            XCTAssertEqual(out.map(\.bitPattern), try floats(c["expected"]).map(\.bitPattern), "\(c["name"] ?? "")")
            let rows = values.count / width
            XCTAssertEqual(codec.encode(values, rows: rows, width: width).count, codec.packedBytes(rows: rows, width: width))
        }
    }

    func testPoliciesFromSidecarsLikeTheRunner() throws {
        XCTAssertEqual(data["chunk"] as? Int, RetentionStore.chunk)
        for c in try Vectors.cases(data, "policies") {
            let built = try RetentionPolicy.fromSidecar(
                try XCTUnwrap(c["sidecar"] as? [String: Any]), policy: try XCTUnwrap(c["retention"] as? String),
                budgetBytes: c["budget_override"] as? Int)
            XCTAssertEqual(built, try policy(c["expected"]))
        }
        for c in try Vectors.cases(data, "invalid_policies") {
            let sidecar = try XCTUnwrap(c["sidecar"] as? [String: Any])
            let retention = try XCTUnwrap(c["retention"] as? String)
            XCTAssertThrowsError(try RetentionPolicy.fromSidecar(sidecar, policy: retention)) {
                XCTAssertEqual(($0 as? RetentionError)?.message, c["python_message"] as? String)
            }
        }
    }

    func testStoreReplaysEveryCase() throws {
        for c in try Vectors.cases(data, "cases") {
            let name = try XCTUnwrap(c["name"] as? String)
            let kv = try XCTUnwrap(c["kv"] as? [String: Any])
            let layout = try KvLayout(kv: kv, nLayers: try XCTUnwrap(c["n_layers"] as? Int))
            let policy = try policy(c["policy"])
            if let sidecar = c["sidecar"] as? [String: Any] {
                XCTAssertEqual(try RetentionPolicy.fromSidecar(sidecar, policy: policy.policy), policy)
            }
            let store = try RetentionStore(layout: layout, policy: policy)
            XCTAssertEqual(store.tokenBytes, c["token_bytes"] as? Int, name)
            XCTAssertEqual(store.compressBytes, c["compress_bytes"] as? Int, name)
            XCTAssertEqual(store.recent, c["recent"] as? Int, name)
            for step in try Vectors.cases(c, "steps") {
                if let length = step["truncate"] as? Int {
                    try store.truncate(length)
                } else {
                    let n = try XCTUnwrap(step["new_tokens"] as? Int)
                    let hex = try XCTUnwrap(step["presents"] as? [String: Any])
                    let presents = try presents(layout, hex, n, leading: store.heldTokens)
                    try store.observe(step["retention"] is String ? try floats(step["retention"]) : nil)
                    if let error = step["error"] as? String {
                        XCTAssertThrowsError(try store.update(presents, newTokens: n), name) {
                            XCTAssertEqual(($0 as? RetentionError)?.message, error)
                        }
                        break
                    }
                    try store.update(presents, newTokens: n)
                }
                XCTAssertEqual(store.length, step["length"] as? Int, name)
                XCTAssertEqual(store.positions(), Vectors.ints(step["positions"]), name)
                XCTAssertEqual(store.compressed(), Vectors.ints(step["compressed"]).map { $0 == 1 }, name)
                XCTAssertEqual(store.nbytes(), step["nbytes"] as? Int, name)
                XCTAssertEqual(store.evicted, step["evicted"] as? Int, name)
                XCTAssertEqual(sha256(store.feeds(), layout), step["feeds_sha256"] as? String, name)
            }
        }
    }

    func testSidecarsTheAppCannotUseAreRefused() throws {
        let good = try XCTUnwrap(try Vectors.cases(data, "policies").first?["sidecar"] as? [String: Any])
        var compress = try XCTUnwrap(good["compress"] as? [String: Any])
        compress["group"] = 0
        let bad: [(String, Any?, String)] = [
            ("output", "logits", "output"), ("class_rule", "max", "class_rule"), ("sink_tokens", 1.5, "sink_tokens"),
            ("recent_fraction", 1.5, "recent_fraction"), ("compress", compress, "group"), ("compress", nil, "compress"),
        ]
        for (key, value, what) in bad {
            var sidecar = good
            sidecar[key] = value
            expectRefused(what) { _ = try RetentionPolicy.fromSidecar(sidecar) }
        }
        expectRefused("h2o") { _ = try RetentionPolicy.fromSidecar(good, policy: "h2o") }
        expectRefused("budget") { _ = try RetentionPolicy.fromSidecar(good, budgetBytes: 0) }
        let u8 = try KvLayout(kv: kv.merging(["storage": ["dtype": "u8"]]) { $1 }, nLayers: 2)
        expectRefused("fp32") { _ = try RetentionStore(layout: u8, policy: RetentionPolicy(budgetBytes: 4096)) }
        let fp16 = try KvLayout(kv: kv, nLayers: 2, storageDtype: "float16")
        expectRefused("fp32") { _ = try RetentionStore(layout: fp16, policy: RetentionPolicy(budgetBytes: 4096)) }
    }

    func testChoiceIsRetentionOnlyWithSidecarAndOutput() throws {
        let sidecar = try XCTUnwrap(try Vectors.cases(data, "policies").first?["sidecar"] as? [String: Any])
        let own = try XCTUnwrap(sidecar["budget_bytes"] as? Int)
        func choose(_ sidecar: [String: Any]?, output: Bool = true, kv: String = "fp32", budget: Int = 1 << 30) throws -> KvChoice {
            try KvChoice.choose(sidecar: sidecar, hasRetentionOutput: output, kvDtype: kv, deviceBudgetBytes: budget)
        }
        XCTAssertNil(try choose(nil).retention)
        let noOutput = try choose(sidecar, output: false)
        XCTAssertNil(noOutput.retention)
        XCTAssertTrue(noOutput.note.contains("no retention output"))
        let roomy = try choose(sidecar)
        XCTAssertEqual(roomy.retention, try RetentionPolicy.fromSidecar(sidecar))
        XCTAssertTrue(roomy.note.contains("the sidecar's"))
        let tight = try choose(sidecar, budget: own / 2)
        XCTAssertEqual(tight.retention?.budgetBytes, own / 2)
        XCTAssertTrue(tight.note.contains("device memory"))
        let quantized = try choose(sidecar, kv: "nf4")
        XCTAssertNil(quantized.retention)
        XCTAssertTrue(quantized.note.contains("fp32"))
    }

    func testLongRunStaysWithinTheBudgetAndCapacity() throws {
        let layout = try KvLayout(kv: kv, nLayers: 2)
        let budget = RetentionPolicy(budgetBytes: 24 * 128, sinkTokens: 2, compressGroup: 4)
        let wide = try RetentionStore(layout: layout, policy: budget)
        let fitted = wide.policy(holdingAtMost: 40)
        XCTAssertLessThan(fitted.budgetBytes, wide.policy.budgetBytes)
        let store = try RetentionStore(layout: layout, policy: fitted)
        XCTAssertLessThanOrEqual(store.maxHeldTokens(), 40)
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3 {
            store.reset()
            while store.length < 300 {
                let n = store.length == 0 ? RetentionStore.chunk : 1
                let presents = Vectors.fakePresents(layout, start: store.length, count: n, leading: store.heldTokens)
                try store.observe((0..<(3 * n)).map { _ in Float(Int(rng.next() % 9) - 4) / 2 })
                try store.update(presents, newTokens: n)
                XCTAssertLessThanOrEqual(store.nbytes(), store.policy.budgetBytes)
                XCTAssertLessThanOrEqual(store.heldTokens, 40)
            }
            let positions = store.positions()
            XCTAssertEqual(positions, positions.sorted())
            XCTAssertEqual(Array(positions.prefix(2)), [0, 1])
            XCTAssertEqual(Array(positions.suffix(store.recent)), Array((300 - store.recent)..<300))
            XCTAssertFalse(store.compressed().suffix(store.recent).contains(true))
            XCTAssertEqual(store.heldTokens + store.evicted, 300)
            let fed = Vectors.fedTokens(try XCTUnwrap(store.feeds()["past_key_values.1.value"]))
            XCTAssertEqual(Array(fed.suffix(store.recent)), Array(positions.suffix(store.recent)))
        }
    }

    private let kv: [String: Any] = [
        "layout": "BNSH", "kind": "gqa", "heads": 2, "key_dim": 4, "value_dim": 4,
        "past_key": "past_key_values.{layer}.key", "past_value": "past_key_values.{layer}.value",
        "present_key": "present.{layer}.key", "present_value": "present.{layer}.value",
    ]

    private func expectRefused(_ what: String, _ block: () throws -> Void) {
        XCTAssertThrowsError(try block(), "expected \(what) to be refused") { error in
            let message = (error as? RetentionError)?.message ?? ""
            XCTAssertTrue(message.contains(what), "\(message) should mention \(what)")
        }
    }

    private func policy(_ value: Any?) throws -> RetentionPolicy {
        let p = try XCTUnwrap(value as? [String: Any])
        return RetentionPolicy(
            budgetBytes: try XCTUnwrap(p["budget_bytes"] as? Int), policy: try XCTUnwrap(p["policy"] as? String),
            sinkTokens: try XCTUnwrap(p["sink_tokens"] as? Int), recentWindow: try XCTUnwrap(p["recent_window"] as? Int),
            compressGroup: try XCTUnwrap(p["compress_group"] as? Int), compress: try XCTUnwrap(p["compress"] as? String),
            recentFraction: try XCTUnwrap(p["recent_fraction"] as? Double))
    }

    /// The step's new rows after `leading` rows of -1, as a graph returns past + new: [1, heads, leading + n, width].
    private func presents(_ layout: KvLayout, _ hex: [String: Any], _ n: Int, leading: Int) throws -> [String: KvTensor] {
        var out: [String: KvTensor] = [:]
        for (i, name) in layout.inputs.enumerated() {
            let width = layout.widths[i]
            let rows = try floats(hex[name])
            var values: [Float] = []
            for head in 0..<layout.heads {
                values += [Float](repeating: -1, count: leading * width)
                values += rows[(head * n * width)..<((head + 1) * n * width)]
            }
            let bytes = values.withUnsafeBytes { Array($0) }
            out[name] = KvTensor(name: name, dtype: "float32", shape: [1, layout.heads, leading + n, width], data: bytes)
        }
        return out
    }

    /// sha256 of the feeds' float32 little-endian bytes, inputs in layout order.
    private func sha256(_ feeds: [String: KvTensor], _ layout: KvLayout) -> String {
        let hasher = SHA256Hasher()
        for name in layout.inputs {
            let data = feeds[name]?.data ?? []
            var floats = [Float](repeating: 0, count: data.count / 4)
            floats.withUnsafeMutableBytes { $0.copyBytes(from: data) }
            hasher.update(floats.flatMap { value -> [UInt8] in
                let bits = value.bitPattern.littleEndian
                return [UInt8(bits & 0xff), UInt8((bits >> 8) & 0xff), UInt8((bits >> 16) & 0xff), UInt8(bits >> 24)]
            })
        }
        return hasher.hexDigest()
    }

    private func floats(_ value: Any?) throws -> [Float] {
        let text = Array(try XCTUnwrap(value as? String).utf8)
        return stride(from: 0, to: text.count, by: 8).map { start in
            var bits: UInt32 = 0
            for c in text[start..<(start + 8)] { bits = bits << 4 | UInt32(c <= 57 ? c - 48 : c - 87) }
            return Float(bitPattern: bits)
        }
    }
}
