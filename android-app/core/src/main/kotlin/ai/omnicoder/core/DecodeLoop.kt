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
 * Any of `stopIds` ends a turn; with `feedStopToken` false such a token is not fed at the next turn (a chat
 * format's `assistant.suffix` writes the end of the turn, as the template does).
 */
class Conversation(
    private val session: ModelSession,
    private val sampler: Sampler,
    stopIds: Collection<Int>,
    private val feedStopToken: Boolean = true,
    private val clock: () -> Long = System::nanoTime,
) {
    /** Stops at `eosId` only and feeds it at the next turn (the byte models' plain continuation). */
    constructor(session: ModelSession, sampler: Sampler, eosId: Int, clock: () -> Long = System::nanoTime) :
        this(session, sampler, listOf(eosId), true, clock)

    /** Every id that ends generation (EOS, end of turn, ...). */
    val stopIds: Set<Int> = stopIds.toSet()

    /** The last sampled token, not yet in the cache; null before the first turn. */
    var pending: Int? = null
        private set

    /** True after a first turn: the next generate continues the KV cache. */
    val started: Boolean get() = pending != null

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
        // a stop token is dropped when the caller's prompt writes the end of the turn itself (chat formats)
        val feed = carried != null && (feedStopToken || carried !in stopIds)
        var ids = if (feed) intArrayOf(carried!!) + promptIds else promptIds
        require(ids.isNotEmpty()) { "a turn needs a non-empty prompt" }
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
            if (token in stopIds) {
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
