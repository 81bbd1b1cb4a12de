package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import java.text.Normalizer

/** GPT-2's byte <-> character table (`bytes_to_unicode`): every byte as a printable character. */
object ByteLevelTable {
    val byteToChar = CharArray(256)
    val charToByte = IntArray(0x200) { -1 }

    init {
        var n = 0
        for (b in 0 until 256) {
            val printable = b in 0x21..0x7E || b in 0xA1..0xAC || b in 0xAE..0xFF
            val c = if (printable) b else 256 + n++
            byteToChar[b] = c.toChar()
            charToByte[c] = b
        }
    }

    fun encode(text: String): String {
        val bytes = text.toByteArray(Charsets.UTF_8)
        val out = CharArray(bytes.size)
        for (i in bytes.indices) out[i] = byteToChar[bytes[i].toInt() and 0xFF]
        return String(out)
    }
}

internal fun JSONObject.kind(): String = optString("type", "?")

internal fun JSONObject.objectOrNull(key: String): JSONObject? = if (isNull(key)) null else getJSONObject(key)

internal fun JSONArray.objects(): List<JSONObject> = (0 until length()).map { getJSONObject(it) }

// ---- normalizers ---------------------------------------------------------------------------------------------

internal fun normalizerOf(spec: JSONObject?): (String) -> String {
    if (spec == null) return { it }
    return when (val kind = spec.kind()) {
        "NFC" -> { s -> Normalizer.normalize(s, Normalizer.Form.NFC) }
        "NFD" -> { s -> Normalizer.normalize(s, Normalizer.Form.NFD) }
        "NFKC" -> { s -> Normalizer.normalize(s, Normalizer.Form.NFKC) }
        "NFKD" -> { s -> Normalizer.normalize(s, Normalizer.Form.NFKD) }
        "Sequence" -> {
            val steps = spec.getJSONArray("normalizers").objects().map(::normalizerOf)
            return { s -> steps.fold(s) { acc, step -> step(acc) } }
        }
        else -> throw TokenizerException("tokenizer.json normalizer $kind is not supported (the app reads byte-level BPE tokenizers)")
    }
}

// ---- pre-tokenizers: one piece of text -> pieces -------------------------------------------------------------

internal fun interface PreTokenizer {
    fun split(pieces: List<String>): List<String>
}

private fun eachPiece(pieces: List<String>, f: (String) -> List<String>): List<String> =
    pieces.flatMap(f).filter { it.isNotEmpty() }

internal fun preTokenizerOf(spec: JSONObject?): PreTokenizer {
    if (spec == null) return PreTokenizer { it }
    return when (val kind = spec.kind()) {
        "ByteLevel" -> {
            val prefix = spec.optBoolean("add_prefix_space", true)
            val regex = if (spec.optBoolean("use_regex", true)) OnigPattern.compile(OnigPattern.GPT2) else null
            PreTokenizer { pieces ->
                eachPiece(pieces) { p ->
                    val text = if (prefix && !p.startsWith(" ")) " $p" else p
                    val parts = if (regex != null) splitBy(text, findSpans(regex, text), "Isolated") else listOf(text)
                    parts.map(ByteLevelTable::encode)
                }
            }
        }
        "Split" -> {
            val pattern = spec.getJSONObject("pattern")
            val regex = when {
                pattern.has("Regex") -> OnigPattern.compile(pattern.getString("Regex"))
                pattern.has("String") -> OnigPattern.literal(pattern.getString("String"))
                else -> throw TokenizerException("tokenizer.json Split pattern is neither Regex nor String")
            }
            val behavior = spec.getString("behavior")
            val invert = spec.optBoolean("invert", false)
            splitBy("", emptyList(), behavior) // unknown behaviors fail at load
            PreTokenizer { pieces ->
                eachPiece(pieces) { p ->
                    val spans = findSpans(regex, p).map { if (invert) it.copy(isMatch = !it.isMatch) else it }
                    splitBy(p, spans, behavior)
                }
            }
        }
        "Digits" -> {
            val behavior = if (spec.optBoolean("individual_digits", false)) "Isolated" else "Contiguous"
            PreTokenizer { pieces -> eachPiece(pieces) { p -> splitBy(p, findCharSpans(p, ::isNumeric), behavior) } }
        }
        "Sequence" -> {
            val steps = spec.getJSONArray("pretokenizers").objects().map(::preTokenizerOf)
            PreTokenizer { pieces -> steps.fold(pieces) { acc, step -> step.split(acc) } }
        }
        else -> throw TokenizerException(
            "tokenizer.json pre-tokenizer $kind is not supported (the app reads byte-level BPE: ByteLevel, Split, Digits)",
        )
    }
}

/** Rust's `char::is_numeric`: general category Nd, Nl or No. */
internal fun isNumeric(cp: Int): Boolean = when (Character.getType(cp)) {
    Character.DECIMAL_DIGIT_NUMBER.toInt(), Character.LETTER_NUMBER.toInt(), Character.OTHER_NUMBER.toInt() -> true
    else -> false
}

// ---- decoders: tokens -> text pieces (`decode_chain`) ---------------------------------------------------------

internal fun interface TokenDecoder {
    fun chain(tokens: List<String>): List<String>
}

/** Lossy UTF-8 (one U+FFFD per maximal invalid subpart, as Rust's `from_utf8_lossy`). */
internal fun lossyUtf8(bytes: ByteArray, count: Int = bytes.size): String {
    val d = Utf8StreamDecoder(surrogatePass = false)
    val sb = StringBuilder()
    for (i in 0 until count) sb.append(d.push(bytes[i].toInt() and 0xFF))
    return sb.append(d.flush()).toString()
}

internal fun decoderOf(spec: JSONObject?): TokenDecoder? {
    if (spec == null) return null
    return when (val kind = spec.kind()) {
        "ByteLevel" -> TokenDecoder { tokens ->
            val out = java.io.ByteArrayOutputStream()
            for (t in tokens) {
                val mapped = t.all { it.code < 0x200 && ByteLevelTable.charToByte[it.code] >= 0 }
                if (mapped) t.forEach { out.write(ByteLevelTable.charToByte[it.code]) } else out.write(t.toByteArray(Charsets.UTF_8))
            }
            listOf(lossyUtf8(out.toByteArray()))
        }
        "ByteFallback" -> TokenDecoder(::byteFallback)
        "Fuse" -> TokenDecoder { tokens -> listOf(tokens.joinToString("")) }
        "Replace" -> {
            val pattern = spec.getJSONObject("pattern")
            val regex = if (pattern.has("String")) OnigPattern.literal(pattern.getString("String")) else OnigPattern.compile(pattern.getString("Regex"))
            val content = spec.getString("content")
            TokenDecoder { tokens ->
                tokens.map { t -> findSpans(regex, t).joinToString("") { if (it.isMatch) content else t.substring(it.start, it.end) } }
            }
        }
        "Sequence" -> {
            val steps = spec.getJSONArray("decoders").objects().map { decoderOf(it)!! }
            TokenDecoder { tokens -> steps.fold(tokens) { acc, step -> step.chain(acc) } }
        }
        else -> throw TokenizerException("tokenizer.json decoder $kind is not supported (the app reads byte-level BPE tokenizers)")
    }
}

private fun byteFallback(tokens: List<String>): List<String> {
    val out = ArrayList<String>()
    val bytes = java.io.ByteArrayOutputStream()
    fun flush() {
        if (bytes.size() == 0) return
        val raw = bytes.toByteArray()
        if (validUtf8(raw)) out.add(String(raw, Charsets.UTF_8)) else repeat(raw.size) { out.add("\uFFFD") }
        bytes.reset()
    }
    for (t in tokens) {
        val b = if (t.length == 6 && t.startsWith("<0x") && t.endsWith(">")) t.substring(3, 5).toIntOrNull(16) else null
        if (b != null) bytes.write(b) else {
            flush()
            out.add(t)
        }
    }
    flush()
    return out
}

private fun validUtf8(bytes: ByteArray): Boolean = try {
    Charsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(bytes))
    true
} catch (e: java.nio.charset.CharacterCodingException) {
    false
}

// ---- post-processors: ids of a sequence -> ids with the template's special tokens ------------------------------

internal fun postProcessorOf(spec: JSONObject?): (IntArray) -> IntArray {
    if (spec == null) return { it }
    return when (val kind = spec.kind()) {
        "ByteLevel" -> { ids -> ids }
        "TemplateProcessing" -> {
            val specials = spec.getJSONObject("special_tokens")
            val parts: List<IntArray?> = spec.getJSONArray("single").objects().map { piece ->
                when {
                    piece.has("Sequence") -> null
                    piece.has("SpecialToken") -> {
                        val id = piece.getJSONObject("SpecialToken").getString("id")
                        val entry = specials.optJSONObject(id) ?: throw TokenizerException("TemplateProcessing names $id, which it does not define")
                        val ids = entry.getJSONArray("ids")
                        IntArray(ids.length()) { ids.getInt(it) }
                    }
                    else -> throw TokenizerException("TemplateProcessing piece $piece is not supported")
                }
            }
            return { ids -> parts.fold(IntArray(0)) { acc, p -> acc + (p ?: ids) } }
        }
        "Sequence" -> {
            val steps = spec.getJSONArray("processors").objects().map(::postProcessorOf)
            return { ids -> steps.fold(ids) { acc, step -> step(acc) } }
        }
        else -> throw TokenizerException("tokenizer.json post-processor $kind is not supported (ByteLevel, TemplateProcessing)")
    }
}
