import Foundation
import XCTest

@testable import OmniCoderCore

/// The shared test vectors of tests/vectors/ (written by tests/vectors/generate.py).
enum Vectors {
    static let dir: URL = {
        if let given = ProcessInfo.processInfo.environment["OMNICODER_VECTORS"] { return URL(fileURLWithPath: given) }
        // Tests/OmniCoderCoreTests/Vectors.swift -> repository root/tests/vectors
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<5 { url.deleteLastPathComponent() }
        return url.appendingPathComponent("tests/vectors")
    }()

    static func load(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func cases(_ object: [String: Any], _ key: String) throws -> [[String: Any]] {
        try XCTUnwrap(object[key] as? [[String: Any]])
    }

    static func ints(_ value: Any?) -> [Int] { (value as? [NSNumber])?.map(\.intValue) ?? (value as? [Int]) ?? [] }

    /// fp32 rows of value 10 * token + head for tokens [start, start + count), after `leading` rows of -1.
    static func fakePresents(_ layout: KvLayout, start: Int, count: Int, leading: Int = 0) -> [String: KvTensor] {
        var out: [String: KvTensor] = [:]
        for (i, name) in layout.inputs.enumerated() {
            let width = layout.widths[i]
            let total = leading + count
            var floats: [Float] = []
            for head in 0..<layout.heads {
                for t in 0..<total {
                    let value: Float = t < leading ? -1 : Float(10 * (start + t - leading) + head)
                    floats += Array(repeating: value, count: width)
                }
            }
            let bytes = floats.withUnsafeBytes { Array($0) }
            out[name] = KvTensor(name: name, dtype: "float32", shape: [1, layout.heads, total, width], data: bytes)
        }
        return out
    }

    /// Token indices held in a feed: head 0, column 0 of each row, divided by 10.
    static func fedTokens(_ tensor: KvTensor) -> [Int] {
        let width = tensor.shape[3]
        let floats = tensor.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return (0..<tensor.shape[2]).map { Int((floats[$0 * width] / 10).rounded()) }
    }
}

/// The fake model of decode_loop.json: logits from integers only, so every language gets the same floats.
final class FakeSession: ModelSession {
    let contextLength: Int
    let vocab: Int
    private(set) var cacheLength = 0
    var calls: [[Int]] = []

    init(contextLength: Int, vocab: Int) {
        self.contextLength = contextLength
        self.vocab = vocab
    }

    func reset() { cacheLength = 0 }

    func step(ids: [Int], positions: [Int]) -> [Float] {
        calls.append([ids.count, positions[0]])
        cacheLength += ids.count
        let h = (ids.last! * 131 + positions.last! * 31 + cacheLength * 7) % 100003
        return (0..<vocab).map { Float(Double((h + $0 * 7919) % 1000) / 100.0) }
    }
}
