import Foundation

/// One benchmark run: time to first token, prefill and decode speed, and the memory sampled after it.
public struct BenchmarkRun: Sendable {
    public let promptTokens: Int
    public let generatedTokens: Int
    public let timeToFirstTokenSeconds: Double
    public let prefillTokensPerSecond: Double
    public let decodeTokensPerSecond: Double
    public let memoryBytes: Int
}

/// The runs of a benchmark and their medians (the first, warm-up run is kept out of the medians).
public struct BenchmarkResult: Sendable {
    public let runs: [BenchmarkRun]
    private var measured: [BenchmarkRun] { runs.count > 1 ? Array(runs.dropFirst()) : runs }

    public var timeToFirstTokenSeconds: Double { BenchmarkResult.median(measured.map(\.timeToFirstTokenSeconds)) }
    public var prefillTokensPerSecond: Double { BenchmarkResult.median(measured.map(\.prefillTokensPerSecond)) }
    public var decodeTokensPerSecond: Double { BenchmarkResult.median(measured.map(\.decodeTokensPerSecond)) }
    public var peakMemoryBytes: Int { runs.map(\.memoryBytes).max() ?? 0 }

    public func summary() -> String {
        String(
            format: "TTFT %.0f ms, prefill %.1f tok/s, decode %.1f tok/s, peak memory %.0f MB (%d runs, first is warm-up)",
            timeToFirstTokenSeconds * 1000, prefillTokensPerSecond, decodeTokensPerSecond,
            Double(peakMemoryBytes) / 1_048_576, runs.count)
    }

    public static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}

/// A fixed benchmark: `runs` fresh conversations, each prefilling `prompt` and generating `genTokens` tokens greedily
/// with no stop ids (every run does the same work). Time to first token is the prefill call plus the first sample;
/// `memory` samples the process's memory after each run (the screen passes phys_footprint).
public enum Benchmark {
    public static func run(
        session: ModelSession, prompt: [Int], genTokens: Int, runs: Int, memory: () -> Int,
        clock: @escaping () -> Double = { Date().timeIntervalSince1970 }, shouldStop: () -> Bool = { false }
    ) throws -> BenchmarkResult {
        precondition(!prompt.isEmpty && genTokens >= 1 && runs >= 1, "a benchmark needs a prompt, tokens and runs")
        var out: [BenchmarkRun] = []
        for _ in 0..<runs {
            if shouldStop() { break }
            let chat = Conversation(
                session: session, sampler: try Sampler(SamplingParams(temperature: 0)), stopIds: [], feedStopToken: true,
                clock: clock)
            let s = try chat.generate(prompt: prompt, maxNewTokens: genTokens, shouldStop: shouldStop).stats
            out.append(
                BenchmarkRun(
                    promptTokens: s.promptTokens, generatedTokens: s.generatedTokens, timeToFirstTokenSeconds: s.prefillSeconds,
                    prefillTokensPerSecond: s.prefillTokensPerSecond, decodeTokensPerSecond: s.decodeTokensPerSecond,
                    memoryBytes: memory()))
            try session.reset()
        }
        return BenchmarkResult(runs: out)
    }
}
