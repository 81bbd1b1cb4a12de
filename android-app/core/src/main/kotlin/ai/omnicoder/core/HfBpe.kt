package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import java.util.PriorityQueue
import java.util.concurrent.ConcurrentHashMap

/**
 * The BPE model of a tokenizer.json (`models::bpe::BPE` of the tokenizers library): vocab, merges ranked by their
 * order ("a b" strings or ["a", "b"] lists), ignore_merges, unk_token / fuse_unk, byte_fallback, and the
 * continuing-subword prefix / end-of-word suffix. Merging follows `Word::merge_all`: lowest rank first, leftmost
 * first among equal ranks, a queued merge is dropped when the pair at its place no longer makes its token.
 */
class BpeModel(spec: JSONObject) {
    val vocab: Map<String, Int>
    val idToToken: Map<Int, String>
    private val merges = HashMap<Long, Long>() // (left id, right id) -> (rank, new id)
    private val unkToken: String? = spec.optStringOrNull("unk_token")
    private val fuseUnk = spec.optBoolean("fuse_unk", false)
    private val byteFallback = spec.optBoolean("byte_fallback", false)
    private val ignoreMerges = spec.optBoolean("ignore_merges", false)
    private val prefix: String? = spec.optStringOrNull("continuing_subword_prefix")
    private val suffix: String? = spec.optStringOrNull("end_of_word_suffix")
    private val cache = ConcurrentHashMap<String, IntArray>()

    init {
        if (spec.kind() != "BPE") {
            throw TokenizerException("tokenizer.json model ${spec.kind()} is not supported (the app reads BPE tokenizers)")
        }
        if (!spec.isNull("dropout") && spec.getDouble("dropout") != 0.0) {
            throw TokenizerException("tokenizer.json BPE dropout ${spec.getDouble("dropout")} is not supported (it is random)")
        }
        val v = spec.getJSONObject("vocab")
        val map = HashMap<String, Int>(v.length() * 2)
        for (key in v.keys()) map[key] = v.getInt(key)
        vocab = map
        idToToken = map.entries.associate { (k, id) -> id to k }
        val list = spec.getJSONArray("merges")
        val prefixLen = prefix?.length ?: 0
        for (rank in 0 until list.length()) {
            val (a, b) = mergePair(list, rank)
            val aId = vocab[a] ?: throw TokenizerException("tokenizer.json merge ${rank + 1} names '$a', which is not in the vocab")
            val bId = vocab[b] ?: throw TokenizerException("tokenizer.json merge ${rank + 1} names '$b', which is not in the vocab")
            val merged = a + b.substring(minOf(prefixLen, b.length))
            val newId = vocab[merged] ?: throw TokenizerException("tokenizer.json merge ${rank + 1} makes '$merged', which is not in the vocab")
            merges[pairKey(aId, bId)] = (rank.toLong() shl 32) or newId.toLong()
        }
    }

    private fun mergePair(list: JSONArray, rank: Int): Pair<String, String> {
        val item = list.get(rank)
        if (item is JSONArray && item.length() == 2) return item.getString(0) to item.getString(1)
        val parts = (item as? String)?.split(' ')
        if (parts == null || parts.size != 2) throw TokenizerException("tokenizer.json merge ${rank + 1} is not 'a b' or [a, b]")
        return parts[0] to parts[1]
    }

    /** The ids of one pre-tokenized piece. */
    fun tokenize(piece: String): IntArray {
        if (piece.isEmpty()) return IntArray(0)
        if (ignoreMerges) vocab[piece]?.let { return intArrayOf(it) }
        cache[piece]?.let { return it }
        val ids = mergeWord(piece)
        if (piece.length < 256 && cache.size < 10000) cache[piece] = ids
        return ids
    }

    private class Merge(val rank: Int, val pos: Int, val newId: Int) : Comparable<Merge> {
        override fun compareTo(other: Merge): Int = if (rank != other.rank) rank.compareTo(other.rank) else pos.compareTo(other.pos)
    }

    private fun mergeWord(word: String): IntArray {
        val ids = ArrayList<Int>()
        var unk = -1 // pending unk id (fused runs)
        var i = 0
        while (i < word.length) {
            val next = word.offsetByCodePoints(i, 1)
            var s = word.substring(i, next)
            if (i > 0 && prefix != null) s = prefix + s
            if (next == word.length && suffix != null) s += suffix
            val id = vocab[s]
            if (id != null) {
                if (unk >= 0) ids.add(unk)
                unk = -1
                ids.add(id)
            } else {
                val bytes = if (byteFallback) s.toByteArray(Charsets.UTF_8).map { vocab["<0x%02X>".format(it.toInt() and 0xFF)] } else null
                if (bytes != null && bytes.all { it != null }) {
                    bytes.forEach { ids.add(it!!) } // before a pending unk, as the tokenizers library does

                } else if (unkToken != null) {
                    val unkId = vocab[unkToken] ?: throw TokenizerException("tokenizer.json unk_token $unkToken is not in the vocab")
                    if (unk >= 0 && !fuseUnk) ids.add(unk)
                    unk = unkId
                }
            }
            i = next
        }
        if (unk >= 0) ids.add(unk)
        return mergeAll(ids.toIntArray())
    }

    private fun mergeAll(c: IntArray): IntArray {
        val n = c.size
        val prev = IntArray(n) { it - 1 }
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val removed = BooleanArray(n)
        val queue = PriorityQueue<Merge>()
        for (p in 0 until n - 1) merges[pairKey(c[p], c[p + 1])]?.let { queue.add(Merge((it shr 32).toInt(), p, it.toInt())) }
        while (true) {
            val top = queue.poll() ?: break
            if (removed[top.pos] || next[top.pos] == -1) continue
            val right = next[top.pos]
            val m = merges[pairKey(c[top.pos], c[right])]
            if (m == null || m.toInt() != top.newId) continue
            c[top.pos] = top.newId
            removed[right] = true
            next[top.pos] = next[right]
            if (next[right] >= 0) prev[next[right]] = top.pos
            val before = prev[top.pos]
            if (before >= 0) merges[pairKey(c[before], c[top.pos])]?.let { queue.add(Merge((it shr 32).toInt(), before, it.toInt())) }
            val after = next[top.pos]
            if (after >= 0) merges[pairKey(c[top.pos], c[after])]?.let { queue.add(Merge((it shr 32).toInt(), top.pos, it.toInt())) }
        }
        return IntArray(n - removed.count { it }).also { out ->
            var k = 0
            for (p in 0 until n) if (!removed[p]) out[k++] = c[p]
        }
    }

    private fun pairKey(a: Int, b: Int): Long = (a.toLong() shl 32) or (b.toLong() and 0xFFFFFFFFL)
}

internal fun JSONObject.optStringOrNull(key: String): String? = if (!has(key) || isNull(key)) null else getString(key)
