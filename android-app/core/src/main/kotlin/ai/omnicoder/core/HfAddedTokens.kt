package ai.omnicoder.core

import org.json.JSONObject

/** One entry of tokenizer.json's `added_tokens`. */
data class AddedToken(
    val id: Int,
    val content: String,
    val singleWord: Boolean,
    val lstrip: Boolean,
    val rstrip: Boolean,
    val normalized: Boolean,
    val special: Boolean,
) {
    companion object {
        fun of(o: JSONObject) = AddedToken(
            o.getInt("id"), o.getString("content"), o.optBoolean("single_word", false), o.optBoolean("lstrip", false),
            o.optBoolean("rstrip", false), o.optBoolean("normalized", !o.optBoolean("special", false)),
            o.optBoolean("special", false),
        )
    }
}

/**
 * Finds added tokens in text like the tokenizers library's AddedVocabulary: leftmost-longest matches of the
 * tokens' contents (`patterns`, already normalized for normalized tokens), then single_word, lstrip and rstrip.
 */
internal class AddedTokenMatcher(tokens: List<AddedToken>, patterns: List<String>) {
    private val byFirst: Map<Char, List<Pair<String, AddedToken>>> = tokens.zip(patterns)
        .filter { it.second.isNotEmpty() }
        .map { it.second to it.first }
        .groupBy { it.first[0] }
        .mapValues { (_, list) -> list.sortedByDescending { it.first.length } }

    /** The pieces of `text` (each with the added token's id, or null for text between tokens), covering it. */
    fun split(text: String): List<Pair<String, Int?>> {
        if (text.isEmpty() || byFirst.isEmpty()) return listOf(text to null)
        val out = ArrayList<Pair<String, Int?>>()
        var startOffset = 0
        var i = 0
        while (i < text.length) {
            val hit = byFirst[text[i]]?.firstOrNull { text.startsWith(it.first, i) }
            if (hit == null) {
                i++
                continue
            }
            val (pattern, token) = hit
            var start = i
            var stop = i + pattern.length
            i = stop
            if (token.singleWord) {
                val startSpace = start == 0 || !isWordChar(text.codePointBefore(start))
                val stopSpace = stop == text.length || !isWordChar(text.codePointAt(stop))
                if (!startSpace || !stopSpace) continue
            }
            if (token.lstrip) {
                var s = start
                while (s > 0 && isWhiteSpace(text.codePointBefore(s))) s -= Character.charCount(text.codePointBefore(s))
                start = maxOf(s, startOffset)
            }
            if (token.rstrip) {
                while (stop < text.length && isWhiteSpace(text.codePointAt(stop))) stop += Character.charCount(text.codePointAt(stop))
            }
            if (startOffset < start) out.add(text.substring(startOffset, start) to null)
            out.add(text.substring(start, stop) to token.id)
            startOffset = stop
        }
        if (startOffset != text.length) out.add(text.substring(startOffset) to null)
        return out
    }
}

/** Unicode White_Space (Rust's `\s` and `char::is_whitespace`, Oniguruma's `\s`). */
internal fun isWhiteSpace(cp: Int): Boolean =
    cp in 0x09..0x0D || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 || cp in 0x2000..0x200A ||
        cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000

/** Rust regex's Unicode `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls. */
internal fun isWordChar(cp: Int): Boolean = Character.isAlphabetic(cp) || cp == 0x200C || cp == 0x200D ||
    when (Character.getType(cp)) {
        Character.NON_SPACING_MARK.toInt(), Character.ENCLOSING_MARK.toInt(), Character.COMBINING_SPACING_MARK.toInt(),
        Character.DECIMAL_DIGIT_NUMBER.toInt(), Character.CONNECTOR_PUNCTUATION.toInt() -> true
        else -> false
    }
