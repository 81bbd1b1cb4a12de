package ai.omnicoder.core

import org.json.JSONException
import org.json.JSONObject

/**
 * A Hugging Face tokenizer.json tokenizer with the `tokenizers` library's ids (checked on tests/vectors/hf_tokenizer.json):
 * byte-level BPE as SmolLM2, Qwen2/2.5/3 and Llama-3 ship it.
 *
 * `encode(text, addSpecialTokens)` follows `Tokenizer::encode`: added tokens first (special and `normalized: false`
 * ones on the raw text, then the normalized ones on the normalized text; leftmost-longest), the normalizer (NFC /
 * NFD / NFKC / NFKD / Sequence), the pre-tokenizer (ByteLevel with GPT-2's regex, Split with the file's regex,
 * Digits, Sequence), the BPE model, and with `addSpecialTokens` the post-processor (TemplateProcessing's BOS).
 * `decode` joins tokens through the decoder (ByteLevel, ByteFallback, Fuse, Replace, Sequence). Other kinds
 * (Unigram, WordPiece, WordLevel, Metaspace, BERT pieces, Lowercase, ...) are refused with a TokenizerException
 * that names them.
 */
class HfTokenizer private constructor(spec: JSONObject) {
    val model: BpeModel
    val addedTokens: List<AddedToken>
    private val addedById: Map<Int, AddedToken>
    private val addedByContent: Map<String, AddedToken>
    private val specialContents: Set<String>
    private val normalize: (String) -> String
    private val preTokenizer: PreTokenizer
    private val decoder: TokenDecoder?
    private val postProcess: (IntArray) -> IntArray
    private val rawMatcher: AddedTokenMatcher
    private val normalizedMatcher: AddedTokenMatcher

    /** Distinct tokens, added ones included (`get_vocab_size(with_added_tokens=True)`). */
    val vocabSize: Int

    init {
        model = BpeModel(spec.getJSONObject("model"))
        normalize = normalizerOf(spec.objectOrNull("normalizer"))
        preTokenizer = preTokenizerOf(spec.objectOrNull("pre_tokenizer"))
        decoder = decoderOf(spec.objectOrNull("decoder"))
        postProcess = postProcessorOf(spec.objectOrNull("post_processor"))
        addedTokens = spec.optJSONArray("added_tokens")?.objects()?.map(AddedToken::of) ?: emptyList()
        addedById = addedTokens.associateBy { it.id }
        addedByContent = addedTokens.associateBy { it.content }
        specialContents = addedTokens.filter { it.special }.map { it.content }.toSet()
        val (normalized, raw) = addedTokens.partition { it.normalized }
        rawMatcher = AddedTokenMatcher(raw, raw.map { it.content })
        normalizedMatcher = AddedTokenMatcher(normalized, normalized.map { normalize(it.content) })
        vocabSize = (model.vocab.keys + addedByContent.keys).size
    }

    fun tokenToId(token: String): Int? = addedByContent[token]?.id ?: model.vocab[token]

    fun idToToken(id: Int): String? = addedById[id]?.content ?: model.idToToken[id]

    fun isSpecial(id: Int): Boolean = idToToken(id)?.let { it in specialContents } ?: false

    fun encode(text: String, addSpecialTokens: Boolean = false): IntArray {
        val out = ArrayList<Int>()
        for ((piece, id) in rawMatcher.split(text)) {
            if (id != null) {
                out.add(id)
                continue
            }
            if (piece.isEmpty()) continue
            for ((part, partId) in normalizedMatcher.split(normalize(piece))) {
                if (partId != null) {
                    out.add(partId)
                } else if (part.isNotEmpty()) {
                    for (word in preTokenizer.split(listOf(part))) model.tokenize(word).forEach { out.add(it) }
                }
            }
        }
        val ids = out.toIntArray()
        return if (addSpecialTokens) postProcess(ids) else ids
    }

    fun decode(ids: IntArray, skipSpecialTokens: Boolean = false): String {
        val tokens = ids.asList().mapNotNull { idToToken(it) }.filter { !skipSpecialTokens || it !in specialContents }
        return decoder?.chain(tokens)?.joinToString("") ?: tokens.joinToString(" ")
    }

    /** Text as tokens arrive (HfStreamDecoder); special tokens skipped unless asked. */
    fun streamDecoder(skipSpecialTokens: Boolean = true): StreamDecoder = HfStreamDecoder(this, skipSpecialTokens)

    companion object {
        fun fromJson(text: String): HfTokenizer = try {
            HfTokenizer(JSONObject(text))
        } catch (e: JSONException) {
            throw TokenizerException("tokenizer.json is malformed (${e.message}); re-export the bundle")
        }
    }
}

/**
 * Text as tokens arrive, like omnicoder/tokenizer.py's incremental decoder: the decoding of the tokens since the
 * last emitted piece, held back while it ends with U+FFFD (an incomplete character).
 */
class HfStreamDecoder(private val tokenizer: HfTokenizer, private val skipSpecialTokens: Boolean) : StreamDecoder {
    private val pending = ArrayList<Int>()

    override fun push(tokenId: Int): String {
        pending.add(tokenId)
        val text = tokenizer.decode(pending.toIntArray(), skipSpecialTokens)
        if (text.endsWith("\uFFFD")) return ""
        pending.clear()
        return text
    }

    override fun flush(): String {
        val text = tokenizer.decode(pending.toIntArray(), skipSpecialTokens)
        pending.clear()
        return text
    }
}
