import Foundation

/// SplitMix64, the generator of seeded sampling in all three runtimes (runtimes/sampling.py).
public struct SplitMix64 {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

public struct SamplingParams: Equatable, Sendable {
    public var temperature: Double
    public var topK: Int
    public var topP: Double
    public var seed: UInt64

    public init(temperature: Double = 0.8, topK: Int = 0, topP: Double = 0.95, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    public func validate() throws {
        guard temperature.isFinite, temperature >= 0 else { throw SamplingError("temperature must be >= 0 (0 means greedy)") }
        guard topK >= 0 else { throw SamplingError("top-k must be >= 0 (0 means no limit)") }
        guard topP > 0, topP <= 1 else { throw SamplingError("top-p must be in (0, 1]") }
    }
}

public struct SamplingError: Error, CustomStringConvertible {
    public let description: String
    init(_ message: String) { description = message }
}

/// Greedy / temperature / top-k / top-p sampling, token-for-token equal to runtimes/sampling.py.
public final class Sampler {
    public let params: SamplingParams
    private var rng: SplitMix64
    public var greedy: Bool { params.temperature == 0 }

    public init(_ params: SamplingParams) throws {
        try params.validate()
        self.params = params
        rng = SplitMix64(seed: params.seed)
    }

    public func probabilities(_ logits: [Float]) -> [Double] {
        let n = logits.count
        var probs = [Double](repeating: 0, count: n)
        if greedy {
            probs[Sampler.argmax(logits)] = 1
            return probs
        }
        var scaled = logits.map { Double($0) / params.temperature }
        let k = params.topK
        if k > 0 && k < n {
            let kth = scaled.sorted(by: >)[k - 1]
            for i in 0..<n where scaled[i] < kth { scaled[i] = -.infinity }
        }
        let maxValue = scaled.max()!
        var total = 0.0
        for i in 0..<n {
            probs[i] = exp(scaled[i] - maxValue)
            total += probs[i]
        }
        for i in 0..<n { probs[i] /= total }
        if params.topP < 1 {
            let order = (0..<n).sorted { probs[$0] != probs[$1] ? probs[$0] > probs[$1] : $0 < $1 }
            var keep = [Bool](repeating: false, count: n)
            var cumulative = 0.0
            for i in order {
                cumulative += probs[i]
                if cumulative - probs[i] < params.topP { keep[i] = true }
            }
            var kept = 0.0
            for i in 0..<n {
                if !keep[i] { probs[i] = 0 }
                kept += probs[i]
            }
            for i in 0..<n { probs[i] /= kept }
        }
        return probs
    }

    /// Inverse CDF over `probs` in index order with one uniform draw.
    public func draw(_ probs: [Double]) -> Int {
        var cdf = [Double](repeating: 0, count: probs.count)
        var running = 0.0
        for i in probs.indices {
            running += probs[i]
            cdf[i] = running
        }
        let target = rng.nextDouble() * running
        if let index = cdf.firstIndex(where: { $0 > target }) { return index }
        return probs.lastIndex(where: { $0 > 0 }) ?? 0
    }

    public func sample(_ logits: [Float]) -> Int { greedy ? Sampler.argmax(logits) : draw(probabilities(logits)) }

    /// The first index of the largest value (numpy's argmax).
    public static func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in values.indices where values[i] > values[best] { best = i }
        return best
    }
}
