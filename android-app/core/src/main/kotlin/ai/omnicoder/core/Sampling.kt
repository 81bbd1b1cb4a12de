package ai.omnicoder.core

import kotlin.math.exp

/** SplitMix64, the generator of seeded sampling in all three runtimes (runtimes/sampling.py). */
class SplitMix64(seed: Long) {
    private var state = seed

    fun nextLong(): Long {
        state += -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
        var z = state
        z = (z xor (z ushr 30)) * -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
        z = (z xor (z ushr 27)) * -0x6b2fb644ecceee15L // 0x94D049BB133111EB
        return z xor (z ushr 31)
    }

    /** Uniform in [0, 1) with 53 random bits. */
    fun nextDouble(): Double = (nextLong() ushr 11).toDouble() * TWO_POW_MINUS_53

    companion object {
        private const val TWO_POW_MINUS_53 = 1.0 / (1L shl 53)
    }
}

data class SamplingParams(val temperature: Double = 0.8, val topK: Int = 0, val topP: Double = 0.95, val seed: Long = 0) {
    fun validate(): SamplingParams {
        require(temperature.isFinite() && temperature >= 0) { "temperature must be >= 0 (0 means greedy), got $temperature" }
        require(topK >= 0) { "top-k must be >= 0 (0 means no limit), got $topK" }
        require(topP > 0 && topP <= 1) { "top-p must be in (0, 1], got $topP" }
        return this
    }
}

/** Greedy / temperature / top-k / top-p sampling, token-for-token equal to runtimes/sampling.py. */
class Sampler(val params: SamplingParams) {
    private val rng = SplitMix64(params.validate().seed)
    val greedy: Boolean get() = params.temperature == 0.0

    fun probabilities(logits: FloatArray): DoubleArray {
        val n = logits.size
        val probs = DoubleArray(n)
        if (greedy) {
            probs[argmax(logits)] = 1.0
            return probs
        }
        val scaled = DoubleArray(n) { logits[it].toDouble() / params.temperature }
        val k = params.topK
        if (k in 1 until n) {
            val kth = scaled.sortedArrayDescending()[k - 1]
            for (i in 0 until n) if (scaled[i] < kth) scaled[i] = Double.NEGATIVE_INFINITY
        }
        val max = scaled.max()
        var total = 0.0
        for (i in 0 until n) {
            probs[i] = exp(scaled[i] - max)
            total += probs[i]
        }
        for (i in 0 until n) probs[i] /= total
        if (params.topP < 1.0) {
            val order = (0 until n).sortedWith(compareByDescending<Int> { probs[it] }) // stable: ties by index
            val keep = BooleanArray(n)
            var cumulative = 0.0
            for (i in order) {
                cumulative += probs[i]
                if (cumulative - probs[i] < params.topP) keep[i] = true
            }
            var kept = 0.0
            for (i in 0 until n) {
                if (!keep[i]) probs[i] = 0.0
                kept += probs[i]
            }
            for (i in 0 until n) probs[i] /= kept
        }
        return probs
    }

    /** Inverse CDF over `probs` in index order with one uniform draw. */
    fun draw(probs: DoubleArray): Int {
        val cdf = DoubleArray(probs.size)
        var running = 0.0
        for (i in probs.indices) {
            running += probs[i]
            cdf[i] = running
        }
        val target = rng.nextDouble() * running
        for (i in cdf.indices) if (cdf[i] > target) return i
        return probs.indices.last { probs[it] > 0 }
    }

    fun sample(logits: FloatArray): Int = if (greedy) argmax(logits) else draw(probabilities(logits))

    companion object {
        /** The first index of the largest value (numpy's argmax). */
        fun argmax(values: FloatArray): Int {
            var best = 0
            for (i in 1 until values.size) if (values[i] > values[best]) best = i
            return best
        }
    }
}
