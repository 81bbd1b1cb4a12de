package ai.omnicoder.core

import org.json.JSONObject

/** The text written around a message of one role. */
data class RolePiece(val prefix: String, val suffix: String)

/**
 * The bundle's chat template as role pieces, rendered at export (export/chat_format.py; the manifest's
 * `tokenizer.chat_format`). A first turn is the preamble (or the system message) + the user turn + the generation
 * prompt; a later turn continues the KV cache with the end of the reply (`assistant.suffix`) + the user turn + the
 * generation prompt. Tokenized with special tokens matched in the text, this gives the ids Python's ChatSession
 * (runtimes/chat.py) feeds for the same conversation.
 */
class ChatFormat(
    val preamble: String,
    val system: RolePiece?,
    val user: RolePiece,
    val assistant: RolePiece,
    val generationPrompt: String,
    /** Whether the template strips each message's content (Jinja's `| trim`, Python's str.strip()). */
    val trim: Boolean = false,
) {
    /** The first turn's text. A template that takes no system message gets the system text before the user's. */
    fun firstTurn(user: String, systemPrompt: String? = null): String {
        val sys = systemPrompt?.takeIf { it.isNotEmpty() }
        return when {
            sys == null -> preamble + userTurn(user)
            system != null -> system.prefix + content(sys) + system.suffix + userTurn(user)
            else -> preamble + userTurn("$sys\n\n$user")
        }
    }

    /** A later turn's text: it closes the model's reply (whose end-of-turn token was not fed) and asks again. */
    fun nextTurn(user: String): String = assistant.suffix + userTurn(user)

    private fun userTurn(text: String): String = user.prefix + content(text) + user.suffix + generationPrompt

    private fun content(text: String): String = if (trim) pyStrip(text) else text

    companion object {
        /** The manifest's `tokenizer.chat_format`, or null when absent. */
        fun fromJson(obj: JSONObject?): ChatFormat? {
            if (obj == null) return null
            fun piece(name: String): RolePiece {
                val p = obj.getJSONObject(name)
                return RolePiece(p.getString("prefix"), p.getString("suffix"))
            }
            return ChatFormat(
                obj.getString("preamble"),
                if (obj.isNull("system")) null else piece("system"),
                piece("user"),
                piece("assistant"),
                obj.getString("generation_prompt"),
                obj.optBoolean("trim", false),
            )
        }

        /** Python's str.isspace characters (Java's isWhitespace leaves out U+00A0, U+2007, U+202F and U+0085). */
        fun isPySpace(c: Char): Boolean =
            c in '\t'..'\r' || c in '\u001c'..'\u0020' || c == '\u0085' || c == '\u00a0' || c == '\u1680' ||
                c in '\u2000'..'\u200a' || c == '\u2028' || c == '\u2029' || c == '\u202f' || c == '\u205f' || c == '\u3000'

        /** Python's str.strip() (Jinja's `trim` filter). */
        fun pyStrip(text: String): String = text.trim(::isPySpace)
    }
}

/**
 * The prompt ids of each turn. With a chat format the text is tokenized as written (the template writes BOS where
 * the model wants one, as Hugging Face's apply_chat_template does); without one (byte models, templates the
 * exporter could not describe) the user's text is the prompt, later turns start on a new line, and BOS comes first
 * only when the tokenizer adds one (`firstTurn && tokenizer.addsBos`).
 */
class ChatPrompter(val tokenizer: TextTokenizer, val format: ChatFormat?) {
    fun ids(user: String, firstTurn: Boolean, systemPrompt: String? = null): IntArray {
        val f = format ?: return tokenizer.encode(if (firstTurn) user else "\n$user", addBos = firstTurn && tokenizer.addsBos)
        return tokenizer.encode(if (firstTurn) f.firstTurn(user, systemPrompt) else f.nextTurn(user), addBos = false)
    }

    /** In a chat, an end-of-turn id is not fed at the next turn: `assistant.suffix` writes the end of the reply. */
    val feedsStopToken: Boolean get() = format == null
}
