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

/**
 * The seam speculative decoding needs (runtimes/speculative.py SpeculativeBackend): a model call that returns the
 * logits of every token it takes, and a KV store that can roll back. A session implements it when its graph takes
 * several tokens per call (every exported graph does) and its store can forget the newest rows.
 */
interface SpeculativeSession : ModelSession {
    /** Run the tokens at their absolute positions, append them to the cache, return every position's logits [T][V]. */
    fun verify(ids: IntArray, positions: IntArray): Array<FloatArray>

    /** Keep the first `length` cached tokens (rejected drafts' rows go). */
    fun truncate(length: Int)
}

enum class StopReason(val label: String) { LIMIT("limit"), EOS("eos"), CONTEXT("context"), STOPPED("stopped") }

class GenerationStats(
    val promptTokens: Int,
    val generatedTokens: Int,
    val prefillSeconds: Double,
    val decodeSeconds: Double,
    val stopReason: StopReason,
    /** Model calls after the prefill; with speculation each verifies the last token and the drafts. */
    val modelCalls: Int = 0,
    /** Speculation: tokens the n-gram drafter proposed, and how many confirmed ones were emitted. */
    val draftTokens: Int = 0,
    val acceptedTokens: Int = 0,
) {
    /** Tokens per model call after the prefill (1 without speculation). */
    val tokensPerCall: Double get() = if (modelCalls > 0) (generatedTokens - 1).coerceAtLeast(0).toDouble() / modelCalls else 0.0
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
 *
 * With `maxDraft` > 0, greedy sampling and a [SpeculativeSession], tokens after the first come from speculative
 * decoding with an [NgramDrafter] (runtimes/speculative.py Speculation with `--draft ngram`, no tie guard): one
 * call verifies the last token and up to `maxDraft` guesses, the longest prefix of guesses equal to the greedy
 * choices is kept, the rows after it are rolled back, and the next token comes from the last kept row. The drafter
 * sees this turn's fed tokens and its output (Python's `run.prompt + run.out`). The turn ends with the cache as
 * plain decoding leaves it (the last token pending), so later turns continue the same way. Otherwise (sampling, a
 * session without verify) decoding is plain, one token per call.
 */
class Conversation(
    private val session: ModelSession,
    private val sampler: Sampler,
    stopIds: Collection<Int>,
    private val feedStopToken: Boolean = true,
    private val clock: () -> Long = System::nanoTime,
    private val maxDraft: Int = 0,
) {
    /** Stops at `eosId` only and feeds it at the next turn (the byte models' plain continuation). */
    constructor(session: ModelSession, sampler: Sampler, eosId: Int, clock: () -> Long = System::nanoTime) :
        this(session, sampler, listOf(eosId), true, clock)

    init {
        require(maxDraft >= 0) { "the draft length must be >= 0 (0: no speculation), got $maxDraft" }
    }

    /** Every id that ends generation (EOS, end of turn, ...). */
    val stopIds: Set<Int> = stopIds.toSet()

    /** The last sampled token, not yet in the cache; null before the first turn. */
    var pending: Int? = null
        private set

    /** True after a first turn: the next generate continues the KV cache. */
    val started: Boolean get() = pending != null

    /** The session that verifies drafts, or null when this conversation decodes one token per call. */
    val speculative: SpeculativeSession? = if (maxDraft > 0 && sampler.greedy) session as? SpeculativeSession else null

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
        val ids = if (feed) intArrayOf(carried!!) + promptIds else promptIds
        require(ids.isNotEmpty()) { "a turn needs a non-empty prompt" }
        if (carried == null) session.reset()
        val start = session.cacheLength
        if (start + ids.size > context) {
            throw ContextFullException("the conversation needs ${start + ids.size} tokens, more than the context ($context)")
        }
        if (maxNewTokens <= 0) return GenerationResult(emptyList(), GenerationStats(ids.size, 0, 0.0, 0.0, StopReason.LIMIT))
        val out = ArrayList<Int>()
        val next = speculative?.let { Verifier(it, NgramDrafter(maxDraft), ids.toMutableList(), out, maxNewTokens, context) }
        var reason = StopReason.LIMIT
        var t0 = clock()
        var token = sampler.sample(session.step(ids, IntArray(ids.size) { start + it }))
        val now = clock()
        val prefill = (now - t0) / 1e9
        t0 = now
        var fed = start + ids.size // the cache plain decoding holds before `token`: `token`'s position
        var calls = 0
        while (true) {
            pending = token
            if (token in stopIds) {
                reason = StopReason.EOS
                break
            }
            out.add(token)
            onToken(token)
            if (fed >= context) {
                reason = StopReason.CONTEXT
                break
            }
            if (out.size >= maxNewTokens) break
            if (shouldStop()) {
                reason = StopReason.STOPPED
                break
            }
            if (next != null) {
                token = next.token()
            } else {
                token = sampler.sample(session.step(intArrayOf(token), intArrayOf(fed)))
                calls++
            }
            fed++
        }
        // a verify call may have cached the last token (an accepted draft): plain decoding leaves it pending
        if (next != null && session.cacheLength > fed) next.session.truncate(fed)
        val decode = if (out.isEmpty()) 0.0 else (clock() - t0) / 1e9
        val stats = GenerationStats(
            ids.size, out.size, prefill, decode, reason,
            next?.calls ?: calls, next?.drafted ?: 0, next?.accepted ?: 0,
        )
        return GenerationResult(out, stats)
    }

    /** One turn's verify calls: the tokens they decided, handed out one at a time. */
    private class Verifier(
        val session: SpeculativeSession,
        private val drafter: NgramDrafter,
        private val history: MutableList<Int>, // the turn's fed tokens, then `out` as it grows
        private val out: List<Int>,
        private val maxNewTokens: Int,
        private val context: Int,
    ) {
        private val ready = ArrayDeque<Int>()
        private var synced = 0 // tokens of `out` already in `history`
        private var readyDrafts = 0 // confirmed drafts at the head of `ready` (then the token after them)
        var calls = 0
        var drafted = 0
        var accepted = 0

        fun token(): Int {
            if (ready.isEmpty()) call()
            if (readyDrafts > 0) { // counted when handed out, as Python does (a stop may come first)
                readyDrafts--
                accepted++
            }
            return ready.removeFirst()
        }

        /** Verify the last token and the drafter's guesses in one call; keep the confirmed ones and the next. */
        private fun call() {
            while (out.size > synced) history.add(out[synced++])
            val base = session.cacheLength
            val room = maxOf(0, minOf(drafter.maxDraft, maxNewTokens - out.size, context - base - 1))
            val drafts = if (room > 0) drafter.propose(history, room) else emptyList()
            val ids = IntArray(1 + drafts.size) { if (it == 0) out.last() else drafts[it - 1] }
            val rows = session.verify(ids, IntArray(ids.size) { base + it })
            var kept = 0
            while (kept < drafts.size && Sampler.argmax(rows[kept]) == drafts[kept]) kept++
            drafter.observe(drafts.size, kept)
            session.truncate(base + 1 + kept)
            calls++
            drafted += drafts.size
            readyDrafts = kept
            ready.addAll(drafts.subList(0, kept))
            ready.add(Sampler.argmax(rows[kept]))
        }
    }
}
