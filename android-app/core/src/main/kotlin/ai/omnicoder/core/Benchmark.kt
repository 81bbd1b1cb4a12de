package ai.omnicoder.core

/** One benchmark run: time to first token, prefill and decode speed, and the memory sampled after it. */
data class BenchmarkRun(
    val promptTokens: Int,
    val generatedTokens: Int,
    val timeToFirstTokenSeconds: Double,
    val prefillTokensPerSecond: Double,
    val decodeTokensPerSecond: Double,
    val memoryBytes: Long,
)

/** The runs of a benchmark and their medians (the first, warm-up run is kept out of the medians). */
class BenchmarkResult(val runs: List<BenchmarkRun>) {
    private val measured: List<BenchmarkRun> get() = if (runs.size > 1) runs.drop(1) else runs

    val timeToFirstTokenSeconds: Double get() = median(measured.map { it.timeToFirstTokenSeconds })
    val prefillTokensPerSecond: Double get() = median(measured.map { it.prefillTokensPerSecond })
    val decodeTokensPerSecond: Double get() = median(measured.map { it.decodeTokensPerSecond })
    val peakMemoryBytes: Long get() = runs.maxOfOrNull { it.memoryBytes } ?: 0

    fun summary(): String = "TTFT %.0f ms, prefill %.1f tok/s, decode %.1f tok/s, peak memory %.0f MB (%d runs, first is warm-up)".format(
        timeToFirstTokenSeconds * 1000, prefillTokensPerSecond, decodeTokensPerSecond, peakMemoryBytes / 1048576.0, runs.size,
    )

    companion object {
        fun median(values: List<Double>): Double {
            if (values.isEmpty()) return 0.0
            val s = values.sorted()
            return if (s.size % 2 == 1) s[s.size / 2] else (s[s.size / 2 - 1] + s[s.size / 2]) / 2
        }
    }
}

/**
 * A fixed benchmark: `runs` fresh conversations, each prefilling `prompt` and generating `genTokens` tokens greedily
 * with no stop ids (so every run does the same work). Time to first token is the prefill call plus the first
 * sample; `memory` samples the process's memory after each run (the screen passes RSS / phys_footprint).
 */
object Benchmark {
    fun run(
        session: ModelSession,
        prompt: IntArray,
        genTokens: Int,
        runs: Int,
        memory: () -> Long,
        clock: () -> Long = System::nanoTime,
        shouldStop: () -> Boolean = { false },
    ): BenchmarkResult {
        require(prompt.isNotEmpty() && genTokens >= 1 && runs >= 1) { "a benchmark needs a prompt, tokens and runs" }
        val out = ArrayList<BenchmarkRun>()
        for (r in 0 until runs) {
            if (shouldStop()) break
            val chat = Conversation(session, Sampler(SamplingParams(temperature = 0.0)), emptyList(), true, clock)
            val stats = chat.generate(prompt, genTokens, shouldStop).stats
            out += BenchmarkRun(
                stats.promptTokens, stats.generatedTokens, stats.prefillSeconds, stats.prefillTokensPerSecond,
                stats.decodeTokensPerSecond, memory(),
            )
            session.reset()
        }
        return BenchmarkResult(out)
    }
}
