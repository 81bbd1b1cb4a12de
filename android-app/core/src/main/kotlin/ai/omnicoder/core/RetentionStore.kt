package ai.omnicoder.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Token-level KV under a byte budget (runtimes/kv_retention.py RetentionKVCache; policies learned and streaming).
 *
 * One entry per held token, in cache order: its absolute position, its rows per KV input (fp32, or packed by
 * [KvCompress] once compressed), its retention score logit(keep) - logit(drop) and class (argmax). The first
 * `sinkTokens` and the last [recent] tokens are always kept; while [nbytes] exceeds the budget, `learned` compresses
 * the lowest-scored other token whose class is not "drop", and evicts the lowest-scored one when none is left;
 * `streaming` evicts the oldest. Positions stay absolute: the session feeds each token's true position (the next
 * one is [length]), so eviction never shifts RoPE. fp32 KV only, like Python: the store compresses rows itself.
 */
class RetentionStore(val layout: KvLayout, policy: RetentionPolicy) {
    private class Token(val position: Int, val score: Float, val klass: Int, var rows: Array<FloatArray>?) {
        var packed: Array<ByteArray>? = null
    }

    val policy: RetentionPolicy = policy.validate()

    /** Bytes of one token in full precision (all layers). */
    val tokenBytes: Long = layout.bytesPerToken()

    /** Bytes of one compressed token (all layers), as Python counts them. */
    val compressBytes: Long

    /** The recent window: the policy's, else recentFraction of the tokens the budget holds in full precision. */
    val recent: Int

    /** Whether the session must pass the graph's `retention` output to [observe] (learned only). */
    val wantsRetention: Boolean = policy.policy == "learned"

    private val codec: KvCompress? = if (policy.compress == "none") null else KvCompress(policy.compress, policy.compressGroup)
    private val held = ArrayList<Token>()
    private var pending: FloatArray? = null
    private var compressedCount = 0

    /** Tokens fed so far (held or evicted): the next token's absolute position. */
    var length = 0
        private set

    /** Tokens evicted since the last reset. */
    var evicted = 0
        private set

    init {
        if (layout.kvDtype != "fp32" || layout.dtypes.any { it != "float32" }) {
            throw RetentionException("retention runs on bundles with fp32 KV (it compresses rows itself); re-export")
        }
        val fullTokens = policy.budgetBytes.toDouble() / tokenBytes
        recent = if (policy.recentWindow > 0) policy.recentWindow else maxOf(1, (policy.recentFraction * fullTokens).toInt())
        compressBytes = layout.widths.sumOf { w ->
            val groups = w / KvCompress.groupSize(w, policy.compressGroup)
            layout.heads.toLong() * when (policy.compress) {
                "u8" -> w + 4 * groups
                "nf4" -> w / 2 + 2 * groups
                else -> 4 * w
            }
        }
    }

    fun reset() {
        held.clear()
        pending = null
        compressedCount = 0
        length = 0
        evicted = 0
    }

    /** Tokens held (full or compressed). */
    val heldTokens: Int get() = held.size

    /** Absolute positions of the held tokens, in cache order. */
    fun positions(): IntArray = IntArray(held.size) { held[it].position }

    /** Which held tokens are compressed, in cache order. */
    fun compressed(): BooleanArray = BooleanArray(held.size) { held[it].packed != null }

    /** Resident bytes as stored: full tokens at [tokenBytes], compressed ones at [compressBytes]. */
    fun nbytes(): Long = (held.size - compressedCount) * tokenBytes + compressedCount * compressBytes

    /** The smallest size of a held token under this policy: compressed when `learned` compresses, else full. */
    val smallestTokenBytes: Long get() = if (wantsRetention && codec != null) minOf(tokenBytes, compressBytes) else tokenBytes

    /** The largest number of tokens the budget can hold. */
    fun maxHeldTokens(): Long = policy.budgetBytes / smallestTokenBytes

    /** This policy with its budget lowered, if needed, so that at most `tokens` tokens are ever held. */
    fun policyHoldingAtMost(tokens: Int): RetentionPolicy =
        policy.copy(budgetBytes = minOf(policy.budgetBytes, maxOf(1, tokens) * smallestTokenBytes))

    /** The held tokens' rows per KV input, [1, heads, n, width] float32 in native order, in cache order. */
    fun feeds(): Map<String, KvTensor> {
        val out = LinkedHashMap<String, KvTensor>()
        val n = held.size
        for ((i, name) in layout.inputs.withIndex()) {
            val width = layout.widths[i]
            val values = FloatArray(layout.heads * n * width)
            val scratch = FloatArray(layout.heads * width)
            for ((j, token) in held.withIndex()) {
                val rows = token.rows?.get(i) ?: scratch.also { codec!!.decode(token.packed!![i], layout.heads, width, it) }
                for (head in 0 until layout.heads) System.arraycopy(rows, head * width, values, (head * n + j) * width, width)
            }
            val bytes = ByteBuffer.allocate(values.size * 4).order(ByteOrder.nativeOrder())
            bytes.asFloatBuffer().put(values)
            val shape = longArrayOf(1, layout.heads.toLong(), n.toLong(), width.toLong())
            out[name] = KvTensor(name, "float32", shape, bytes.array())
        }
        return out
    }

    /** The retention logits [T, 3] (row-major) of the tokens the next [update] appends; null: no signal. */
    fun observe(retention: FloatArray?) {
        require(retention == null || retention.size % 3 == 0) {
            "retention logits must be [T, 3], got ${retention?.size} values"
        }
        pending = retention
    }

    /** Append the last `newTokens` rows of each present ([1, heads, total, width] fp32, keyed by past input name). */
    fun update(presents: Map<String, KvTensor>, newTokens: Int) {
        require(newTokens >= 1) { "update needs at least one new token" }
        val rows = Array(newTokens) { arrayOfNulls<FloatArray>(layout.inputs.size) }
        for ((i, name) in layout.inputs.withIndex()) {
            val present = presents[name] ?: throw RetentionException("no present tensor for $name")
            val width = layout.widths[i]
            val total = present.shape[2].toInt()
            require(present.shape[1].toInt() == layout.heads && present.shape[3].toInt() == width && total >= newTokens) {
                "present $name has shape ${present.shape.toList()}; expected [1, ${layout.heads}, >= $newTokens, $width]"
            }
            val floats = ByteBuffer.wrap(present.data).order(ByteOrder.nativeOrder()).asFloatBuffer()
            for (k in 0 until newTokens) {
                val dst = FloatArray(layout.heads * width)
                for (head in 0 until layout.heads) {
                    floats.position((head * total + total - newTokens + k) * width)
                    floats.get(dst, head * width, width)
                }
                rows[k][i] = dst
            }
        }
        val logits = pending
        val first = if (logits == null) 0 else logits.size / 3 - newTokens
        require(first >= 0) { "retention logits cover ${logits!!.size / 3} tokens, fewer than the $newTokens new ones" }
        for (k in 0 until newTokens) {
            var score = 0f
            var klass = 0
            if (logits != null) {
                val r = 3 * (first + k)
                klass = firstExtreme(3, wantMax = true) { logits[r + it].toDouble() }
                if (policy.policy == "learned") score = logits[r] - logits[r + 2]
            }
            held.add(Token(length + k, score, klass, rows[k].requireNoNulls()))
        }
        length += newTokens
        pending = null
        enforceBudget()
    }

    /** Forget the tokens at positions >= `length` (speculative decoding's rollback). */
    fun truncate(length: Int) {
        require(length in 0..this.length) { "truncate to $length, but the store has seen ${this.length} tokens" }
        val kept = held.filter { it.position < length }
        held.clear()
        held.addAll(kept)
        compressedCount = kept.count { it.packed != null }
        this.length = length
    }

    private fun enforceBudget() {
        while (nbytes() > policy.budgetBytes) {
            val candidates = held.indices.filter { // not protected: past the sinks and before the recent window
                held[it].position >= policy.sinkTokens && held[it].position < length - recent
            }
            if (candidates.isEmpty()) {
                throw RetentionException(
                    "a KV budget of ${policy.budgetBytes} bytes cannot hold the ${policy.sinkTokens} sink " +
                        "and $recent recent tokens; raise the budget or shrink the window",
                )
            }
            if (policy.policy == "learned" && codec != null) {
                val fresh = candidates.filter { held[it].packed == null && held[it].klass != 2 }
                if (fresh.isNotEmpty()) { // compress the lowest-ranked token that the head does not want dropped
                    compress(held[fresh[firstExtreme(fresh.size) { held[fresh[it]].score.toDouble() }]])
                    continue
                }
            }
            val streaming = policy.policy == "streaming" // the oldest; learned: the lowest score
            val rank = { t: Token -> if (streaming) t.position.toDouble() else t.score.toDouble() }
            val victim = candidates[firstExtreme(candidates.size) { rank(held[candidates[it]]) }]
            if (held.removeAt(victim).packed != null) compressedCount--
            evicted++
        }
    }

    private fun compress(token: Token) {
        val rows = token.rows!!
        token.packed = Array(rows.size) { codec!!.encode(rows[it], layout.heads, layout.widths[it]) }
        token.rows = null
        compressedCount++
    }

    companion object {
        /** Tokens per model call under retention (runtimes/onnx_session.py RETENTION_CHUNK): the policy acts between calls. */
        const val CHUNK = 8
    }

    /** np.argmin / np.argmax over `size` values: the first extreme, or the first NaN when there is one. */
    private inline fun firstExtreme(size: Int, wantMax: Boolean = false, value: (Int) -> Double): Int {
        var best = 0
        var bestValue = value(0)
        if (bestValue.isNaN()) return 0
        for (i in 1 until size) {
            val v = value(i)
            if (v.isNaN()) return i
            if (if (wantMax) v > bestValue else v < bestValue) {
                best = i
                bestValue = v
            }
        }
        return best
    }
}
