package ai.omnicoder.core

import org.json.JSONObject

/**
 * The byte-level tokenizer of omnicoder/tokenizer.py: ids 0-255 are bytes, then BOS/EOS/PAD.
 *
 * Text is encoded as generalized UTF-8 (a lone surrogate takes 3 bytes, as Python's `surrogatepass`), so any
 * Kotlin String round-trips. `decode` turns invalid bytes into U+FFFD where Python would raise.
 */
class ByteTokenizer(
    override val vocabSize: Int = 272,
    override val bosId: Int = 256,
    override val eosId: Int = 257,
    val padId: Int = 258,
) : TextTokenizer {
    override val addsBos: Boolean get() = true
    override val stopIds: List<Int> get() = listOf(eosId)

    override fun encode(text: String, addBos: Boolean): IntArray {
        val out = ArrayList<Int>(text.length + 1)
        if (addBos) out.add(bosId)
        var i = 0
        while (i < text.length) {
            val c = text[i]
            var cp = c.code
            if (Character.isHighSurrogate(c) && i + 1 < text.length && Character.isLowSurrogate(text[i + 1])) {
                cp = Character.toCodePoint(c, text[i + 1])
                i++
            }
            appendUtf8(cp, out)
            i++
        }
        return out.toIntArray()
    }

    override fun decode(ids: IntArray): String {
        val decoder = Utf8StreamDecoder(surrogatePass = true)
        val sb = StringBuilder()
        for (id in ids) if (id in 0..255) sb.append(decoder.push(id))
        sb.append(decoder.flush())
        return sb.toString()
    }

    override fun streamDecoder(): StreamDecoder = Utf8StreamDecoder(surrogatePass = false)

    companion object {
        const val TYPE = "omnicoder-byte"

        fun fromJson(text: String): ByteTokenizer {
            val spec = JSONObject(text)
            require(spec.optString("type") == TYPE) { "tokenizer.json is not an omnicoder-byte tokenizer" }
            val special = spec.getJSONObject("special_tokens")
            return ByteTokenizer(spec.getInt("vocab_size"), special.getInt("bos"), special.getInt("eos"), special.getInt("pad"))
        }

        internal fun appendUtf8(cp: Int, out: MutableList<Int>) {
            when {
                cp < 0x80 -> out.add(cp)
                cp < 0x800 -> {
                    out.add(0xC0 or (cp shr 6)); out.add(0x80 or (cp and 0x3F))
                }
                cp < 0x10000 -> {
                    out.add(0xE0 or (cp shr 12)); out.add(0x80 or ((cp shr 6) and 0x3F)); out.add(0x80 or (cp and 0x3F))
                }
                else -> {
                    out.add(0xF0 or (cp shr 18)); out.add(0x80 or ((cp shr 12) and 0x3F))
                    out.add(0x80 or ((cp shr 6) and 0x3F)); out.add(0x80 or (cp and 0x3F))
                }
            }
        }
    }
}

/** Text from token ids as they arrive, holding back incomplete UTF-8 (Python's incremental decoder). */
interface StreamDecoder {
    fun push(tokenId: Int): String
    fun flush(): String
}

/**
 * UTF-8 decoding with Unicode's "maximal subpart" replacement (one U+FFFD per invalid sequence, as Python's
 * `errors="replace"`). With `surrogatePass`, ED A0-BF xx decodes to a lone surrogate (Python's `surrogatepass`).
 */
class Utf8StreamDecoder(private val surrogatePass: Boolean = false) : StreamDecoder {
    private var needed = 0
    private var seen = 0
    private var cp = 0
    private var lo = 0x80
    private var hi = 0xBF
    private var lead = 0
    private var heldSurrogate = false // ED A0-BF: Python waits for a third byte before replacing both

    override fun push(tokenId: Int): String {
        if (tokenId !in 0..255) return ""
        val sb = StringBuilder()
        feed(tokenId, sb)
        return sb.toString()
    }

    override fun flush(): String {
        if (heldSurrogate) {
            heldSurrogate = false
            return REPLACEMENT + REPLACEMENT
        }
        if (needed == 0) return ""
        needed = 0
        return REPLACEMENT
    }

    private fun feed(b: Int, sb: StringBuilder) {
        if (heldSurrogate) {
            heldSurrogate = false
            sb.append(REPLACEMENT).append(REPLACEMENT)
        }
        if (needed > 0) {
            if (b in lo..hi) {
                cp = (cp shl 6) or (b and 0x3F)
                seen++
                lo = 0x80
                hi = 0xBF
                if (seen == needed) {
                    needed = 0
                    sb.appendCodePoint(cp)
                }
                return
            }
            needed = 0
            if (lead == 0xED && seen == 0 && b in 0xA0..0xBF) {
                heldSurrogate = true
                return
            }
            sb.append(REPLACEMENT) // the maximal subpart so far; then `b` starts afresh
        }
        when (b) {
            in 0x00..0x7F -> sb.append(b.toChar())
            in 0xC2..0xDF -> start(1, b and 0x1F, 0x80, 0xBF)
            0xE0 -> start(2, b and 0x0F, 0xA0, 0xBF)
            in 0xE1..0xEC, 0xEE, 0xEF -> start(2, b and 0x0F, 0x80, 0xBF)
            0xED -> start(2, b and 0x0F, 0x80, if (surrogatePass) 0xBF else 0x9F)
            0xF0 -> start(3, b and 0x07, 0x90, 0xBF)
            in 0xF1..0xF3 -> start(3, b and 0x07, 0x80, 0xBF)
            0xF4 -> start(3, b and 0x07, 0x80, 0x8F)
            else -> sb.append(REPLACEMENT)
        }
    }

    private fun start(count: Int, bits: Int, low: Int, high: Int) {
        lead = if (count == 2) 0xE0 or bits else 0
        needed = count
        seen = 0
        cp = bits
        lo = low
        hi = high
    }

    companion object {
        const val REPLACEMENT = "\uFFFD"
    }
}
