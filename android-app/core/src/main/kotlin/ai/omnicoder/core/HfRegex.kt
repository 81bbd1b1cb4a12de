package ai.omnicoder.core

import java.util.regex.Pattern

/**
 * Oniguruma patterns (what the `tokenizers` library compiles a tokenizer.json's `Split` regex with) as
 * java.util.regex patterns that match the same on the JVM and on Android (whose java.util.regex is ICU).
 *
 * Oniguruma's `\s`, `\d`, `\w` are Unicode classes; Java's are ASCII unless flagged (and Android ignores that flag),
 * so they are spelled out: `\s` is Oniguruma's list (White_Space: U+0009-000D, U+0020, U+0085, U+00A0, U+1680,
 * U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000), `\d` is \p{Nd}, `\w` is letters, marks, numbers and
 * connector punctuation. `(?i)` folds Unicode case (UNICODE_CASE), as Oniguruma does.
 */
object OnigPattern {
    const val SPACE = "\\t\\n\\u000B\\f\\r\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
    private const val WORD = "\\p{L}\\p{M}\\p{N}\\p{Pc}"

    /** GPT-2's pre-tokenizer regex (ByteLevel with use_regex). */
    const val GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

    fun compile(onig: String): Pattern = try {
        Pattern.compile(translate(onig), Pattern.UNICODE_CASE)
    } catch (e: java.util.regex.PatternSyntaxException) {
        throw TokenizerException("tokenizer.json's Split regex does not compile here (${e.description}): $onig")
    }

    fun literal(text: String): Pattern = Pattern.compile(Pattern.quote(text))

    /** The pattern with `\s \S \d \D \w \W` spelled out (inside a character class too, except the negated ones). */
    fun translate(onig: String): String {
        val out = StringBuilder()
        var depth = 0
        var i = 0
        while (i < onig.length) {
            val c = onig[i]
            if (c == '\\' && i + 1 < onig.length) {
                val e = onig[i + 1]
                val inClass = depth > 0
                when (e) {
                    's' -> out.append(if (inClass) SPACE else "[$SPACE]")
                    'd' -> out.append("\\p{Nd}")
                    'D' -> out.append("\\P{Nd}")
                    'w' -> out.append(if (inClass) WORD else "[$WORD]")
                    'S', 'W' -> {
                        if (inClass) throw TokenizerException("tokenizer.json's Split regex uses \\$e inside a class: $onig")
                        out.append(if (e == 'S') "[^$SPACE]" else "[^$WORD]")
                    }
                    else -> out.append(c).append(e)
                }
                i += 2
                continue
            }
            if (c == '[') depth++
            if (c == ']' && depth > 0) depth--
            out.append(c)
            i++
        }
        return out.toString()
    }
}

/** A regex match or the text between two, over a whole string (`find_matches` of the tokenizers library). */
internal data class Span(val start: Int, val end: Int, val isMatch: Boolean)

internal fun findSpans(pattern: Pattern, text: String): List<Span> {
    if (text.isEmpty()) return listOf(Span(0, 0, false))
    val out = ArrayList<Span>()
    val m = pattern.matcher(text)
    var prev = 0
    while (m.find()) {
        if (prev != m.start()) out.add(Span(prev, m.start(), false))
        out.add(Span(m.start(), m.end(), true))
        prev = m.end()
    }
    if (prev != text.length) out.add(Span(prev, text.length, false))
    return out
}

/** Each code point for which `test` holds is a match of its own (the tokenizers library's char patterns). */
internal fun findCharSpans(text: String, test: (Int) -> Boolean): List<Span> {
    if (text.isEmpty()) return listOf(Span(0, 0, false))
    val out = ArrayList<Span>()
    var last = 0
    var i = 0
    while (i < text.length) {
        val cp = text.codePointAt(i)
        val next = i + Character.charCount(cp)
        if (test(cp)) {
            if (last < i) out.add(Span(last, i, false))
            out.add(Span(i, next, true))
            last = next
        }
        i = next
    }
    if (text.length > last) out.add(Span(last, text.length, false))
    return out
}

/** The pieces of `text` that a SplitDelimiterBehavior keeps (`NormalizedString::split`). */
internal fun splitBy(text: String, spans: List<Span>, behavior: String): List<String> {
    val kept = ArrayList<IntArray>() // start, end
    when (behavior) {
        "Isolated" -> spans.forEach { kept.add(intArrayOf(it.start, it.end)) }
        "Removed" -> spans.filter { !it.isMatch }.forEach { kept.add(intArrayOf(it.start, it.end)) }
        "Contiguous", "MergedWithPrevious" -> {
            var previous = false
            for (s in spans) {
                val merge = if (behavior == "Contiguous") s.isMatch == previous else s.isMatch && !previous
                if (merge && kept.isNotEmpty()) kept.last()[1] = s.end else kept.add(intArrayOf(s.start, s.end))
                previous = s.isMatch
            }
        }
        "MergedWithNext" -> {
            var previous = false
            for (s in spans.asReversed()) {
                if (s.isMatch && !previous && kept.isNotEmpty()) kept.last()[0] = s.start else kept.add(intArrayOf(s.start, s.end))
                previous = s.isMatch
            }
            kept.reverse()
        }
        else -> throw TokenizerException("split behavior $behavior is not supported")
    }
    return kept.map { text.substring(it[0], it[1]) }
}
