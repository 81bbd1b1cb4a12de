package ai.omnicoder.core

/** A tokenizer.json the app cannot use (kind not implemented, malformed); the message names what and why. */
class TokenizerException(message: String) : Exception(message)

/**
 * What the app needs of a bundle's tokenizer, whichever kind (omnicoder-byte or a Hugging Face tokenizer.json).
 *
 * `encode(text, addBos)` never applies a post-processor: it prepends `bosId` when asked (and the id exists), as
 * omnicoder/tokenizer.py's `HFTokenizer.encode` does; `addsBos` says whether the model's own tokenizer starts a
 * sequence with BOS (the manifest's `tokenizer.add_bos`). `decode` and `streamDecoder` skip special tokens.
 */
interface TextTokenizer {
    val vocabSize: Int
    val bosId: Int
    val eosId: Int
    val addsBos: Boolean
    val stopIds: List<Int>

    fun encode(text: String, addBos: Boolean = false): IntArray
    fun decode(ids: IntArray): String
    fun streamDecoder(): StreamDecoder
}

/**
 * A bundle's Hugging Face tokenizer: [HfTokenizer] with the ids and flags the manifest records (`model.bos_id`,
 * `model.eos_id`, `tokenizer.add_bos`, `tokenizer.stop_ids`). Chat formatting builds on `hf.encode` with special
 * tokens matched in the text (e.g. "<|im_start|>user\n...").
 */
class BundleHfTokenizer(
    val hf: HfTokenizer,
    override val bosId: Int,
    override val eosId: Int,
    override val addsBos: Boolean,
    stopIds: List<Int>,
) : TextTokenizer {
    override val vocabSize: Int get() = hf.vocabSize
    override val stopIds: List<Int> = (stopIds + eosId).filter { it >= 0 }.distinct().sorted()

    override fun encode(text: String, addBos: Boolean): IntArray {
        val ids = hf.encode(text, addSpecialTokens = false)
        return if (addBos && bosId >= 0) intArrayOf(bosId) + ids else ids
    }

    override fun decode(ids: IntArray): String = hf.decode(ids, skipSpecialTokens = true)

    override fun streamDecoder(): StreamDecoder = hf.streamDecoder(skipSpecialTokens = true)
}
