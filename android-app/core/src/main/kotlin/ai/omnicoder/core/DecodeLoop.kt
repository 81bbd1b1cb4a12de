package ai.omnicoder.core

/** A decode-step model with its own KV cache, batch 1 (runtimes/decode_loop.py StepBackend). */
interface ModelSession {
    /** Tokens the cache may hold; Int.MAX_VALUE when a window lets generation run past the model's context. */
    val contextLength: Int

    /** Tokens fed so far: the next token's absolute position. */
    val cacheLength: Int

    fun reset()

    /** Run the tokens at their absolute positions, append them to the cache, return the last position's logits. */
    fun step(ids: IntArray, positions: IntArray): FloatArray
}

enum class StopReason(val label: String) { LIMIT("limit"), EOS("eos"), CONTEXT("context"), STOPPED("stopped") }

class GenerationStats(
    val promptTokens: Int,
    val generatedTokens: Int,
    val prefillSeconds: Double,
    val decodeSeconds: Double,
    val stopReason: StopReason,
) {
    val prefillTokensPerSecond: Double get() = if (prefillSeconds > 0) promptTokens / prefillSeconds else 0.0
    val decodeTokensPerSecond: Double get() = if (decodeSeconds > 0) (generatedTokens - 1).coerceAtLeast(0) / decodeSeconds else 0.0
}

class GenerationResult(val tokens: List<Int>, val stats: GenerationStats)

class ContextFullException(message: String) : Exception(message)

/**
 * A chat over one model session: the first turn prefills from position 0 (the loop of runtimes/decode_loop.py);
 * each later turn keeps the KV cache and feeds only the token sampled last (never fed yet) and the new prompt.
 */
class Conversation(
    private val session: ModelSession,
    private val sampler: Sampler,
    private val eosId: Int,
    private val clock: () -> Long = System::nanoTime,
) {
    /** The last sampled token, not yet in the cache; null before the first turn. */
    var pending: Int? = null
        private set

    fun reset() {
        session.reset()
        pending = null
    }

    fun generate(
        promptIds: IntArray,
        maxNewTokens: Int,
        shouldStop: () -> Boolean = { false },
        onToken: (Int) -> Unit = {},
    ): GenerationResult {
        require(promptIds.isNotEmpty() || pending != null) { "the first turn needs a non-empty prompt" }
        val context = session.contextLength
        val carried = pending
        var ids = if (carried == null) promptIds else intArrayOf(carried) + promptIds
        if (carried == null) session.reset()
        val start = session.cacheLength
        if (start + ids.size > context) {
            throw ContextFullException("the conversation needs ${start + ids.size} tokens, more than the context ($context)")
        }
        val prefillTokens = ids.size
        var positions = IntArray(ids.size) { start + it }
        val out = ArrayList<Int>()
        var reason = StopReason.LIMIT
        var t0 = clock()
        var prefill = 0.0
        for (step in 0 until maxNewTokens) {
            if (step > 0 && shouldStop()) {
                reason = StopReason.STOPPED
                break
            }
            val token = sampler.sample(session.step(ids, positions))
            pending = token
            if (step == 0) {
                val now = clock()
                prefill = (now - t0) / 1e9
                t0 = now
            }
            if (token == eosId) {
                reason = StopReason.EOS
                break
            }
            out.add(token)
            onToken(token)
            if (session.cacheLength >= context) {
                reason = StopReason.CONTEXT
                break
            }
            ids = intArrayOf(token)
            positions = intArrayOf(positions.last() + 1)
        }
        val decode = if (out.isEmpty()) 0.0 else (clock() - t0) / 1e9
        return GenerationResult(out, GenerationStats(prefillTokens, out.size, prefill, decode, reason))
    }
}
