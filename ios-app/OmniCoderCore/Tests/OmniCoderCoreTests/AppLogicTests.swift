import Foundation
import XCTest

@testable import OmniCoderCore

/// The apps' memory check, memory-pressure policy and benchmark (pure logic; the screens only display them).
final class AppLogicTests: XCTestCase {
    private func manifest(_ files: [String: Int]) throws -> Manifest {
        let url = Vectors.dir.appendingPathComponent("bundles/good/manifest.json")
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        json["files"] = files.mapValues { ["sha256": String(repeating: "0", count: 64), "bytes": $0] as [String: Any] }
        var graph = try XCTUnwrap(json["graph"] as? [String: Any])
        graph["file"] = "model.onnx"
        json["graph"] = graph
        return try Manifest(json: json)
    }

    func testWeightsAreTheGraphAndItsExternalDataLikePython() throws {
        let m = try manifest(["model.onnx": 1000, "model.onnx.data": 50_000, "model.onnxx": 7, "tokenizer.json": 300])
        XCTAssertEqual(MemoryCheck.weightsBytes(m), 51_000)
        let coreml = try manifest(["model.onnx": 10, "prefill.mlpackage/Data/weights.bin": 90, "prefill.mlpackage.txt": 5])
        XCTAssertEqual(MemoryCheck.weightsBytes(coreml, extraGraphFiles: ["prefill.mlpackage"]), 105)
    }

    func testCheckAddsWeightsOverheadAndKv() {
        let mib = MemoryCheck.mib
        let check = MemoryCheck(weightsBytes: 200 * mib, kvBytesPerToken: 36_864, contextTokens: 8192, availableBytes: 1024 * mib)
        XCTAssertEqual(check.overheadBytes, 114 * mib)
        XCTAssertEqual(check.totalBytes, 200 * mib + 114 * mib + 288 * mib)
        XCTAssertTrue(check.fits)
        XCTAssertEqual(check.maxContext, (1024 - 314) * mib / 36_864)
        let tight = MemoryCheck(weightsBytes: 200 * mib, kvBytesPerToken: 36_864, contextTokens: 32_768, availableBytes: 600 * mib)
        XCTAssertFalse(tight.fits)
        XCTAssertTrue(tight.loadable())
        XCTAssertTrue(tight.summary().contains("KV fits for \(tight.maxContext) tokens"))
        let none = MemoryCheck(weightsBytes: 900 * mib, kvBytesPerToken: 36_864, contextTokens: 16, availableBytes: 600 * mib)
        XCTAssertEqual(none.maxContext, 0)
        XCTAssertFalse(none.loadable())
        XCTAssertTrue(none.summary().contains("weights do not fit"))
    }

    func testPressureActions() {
        XCTAssertEqual(PressureAction.forMemoryWarning(inBackground: false), .dropKV)
        XCTAssertEqual(PressureAction.forMemoryWarning(inBackground: true), .releaseModel)
    }

    func testBenchmarkMeasuresWithTheClockAndSkipsTheWarmUp() throws {
        final class Timed: ModelSession {
            var now = 0.0
            let contextLength = 4096
            private(set) var cacheLength = 0
            func reset() { cacheLength = 0 }
            func step(ids: [Int], positions: [Int]) -> [Float] {
                now += ids.count > 1 ? 0.2 : 0.01
                cacheLength += ids.count
                var logits = [Float](repeating: 0, count: 8)
                logits[3] = 1
                return logits
            }
        }
        let session = Timed()
        var sampled = 0
        let result = try Benchmark.run(
            session: session, prompt: Array(repeating: 1, count: 100), genTokens: 11, runs: 3,
            memory: {
                sampled += 1000
                return sampled
            }, clock: { session.now })
        XCTAssertEqual(result.runs.count, 3)
        XCTAssertTrue(result.runs.allSatisfy { $0.generatedTokens == 11 && $0.promptTokens == 100 })
        XCTAssertEqual(result.timeToFirstTokenSeconds, 0.2, accuracy: 1e-9)
        XCTAssertEqual(result.prefillTokensPerSecond, 500, accuracy: 1e-6)
        XCTAssertEqual(result.decodeTokensPerSecond, 100, accuracy: 1e-6)
        XCTAssertEqual(result.peakMemoryBytes, 3000)
        XCTAssertEqual(session.cacheLength, 0)
        XCTAssertEqual(BenchmarkResult.median([4, 1, 2, 3]), 2.5)
    }
}
