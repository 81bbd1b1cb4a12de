package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.file.Files

/** The tokenizer.json tokenizer against tests/vectors/hf_tokenizer.json (the `tokenizers` library's answers). */
class HfTokenizerTest {
    @Test
    fun vectors() {
        val data = Vectors.load("hf_tokenizer.json")
        val counts = check(data, Vectors.dir)
        assertEquals(data.getJSONArray("tokenizers").length(), counts.tokenizers)
        assertTrue(counts.encodes > 4000)
        println("hf tokenizer vectors: $counts")
    }

    /** `OMNICODER_HF_VECTORS=FILE`: the same checks on `gen_hf_tokenizer.py --real TOKENIZER_JSON` output. */
    @Test
    fun realTokenizerVectors() {
        val path = System.getenv("OMNICODER_HF_VECTORS") ?: return
        val counts = check(JSONObject(File(path).readText()), File(path).parentFile)
        println("hf tokenizer vectors ($path): $counts")
    }

    @Test
    fun refusesKindsItDoesNotImplement() {
        val refused = Vectors.objects(Vectors.load("hf_tokenizer.json").getJSONArray("refused"))
        for (case in refused) {
            try {
                HfTokenizer.fromJson(case.getJSONObject("tokenizer").toString())
                fail("${case.getString("name")} was accepted")
            } catch (e: TokenizerException) {
                val word = case.getString("error_names")
                assertTrue("${case.getString("name")}: '${e.message}' does not name $word", word in e.message!!)
            }
        }
        println("hf tokenizer refusals: ${refused.size}")
    }

    @Test
    fun bundleWithHuggingFaceTokenizerIsAccepted() {
        val dir = Files.createTempDirectory("hf-bundle").toFile()
        try {
            File(Vectors.dir, "bundles/good").listFiles()!!.forEach { it.copyTo(File(dir, it.name)) }
            File(Vectors.dir, "hf_tokenizers/gguf.json").copyTo(File(dir, "tokenizer.json"), overwrite = true)
            val manifest = JSONObject(File(dir, "manifest.json").readText())
            manifest.getJSONObject("model").put("vocab_size", 2560).put("bos_id", 1).put("eos_id", 2)
            manifest.put("tokenizer", JSONObject().put("file", "tokenizer.json").put("type", "huggingface").put("add_bos", false).put("stop_ids", JSONArray(listOf(0, 2))))
            val tokFile = File(dir, "tokenizer.json")
            manifest.getJSONObject("files").put("tokenizer.json", JSONObject().put("sha256", BundleReader.sha256(tokFile)).put("bytes", tokFile.length()))
            File(dir, "manifest.json").writeText(manifest.toString())
            val tok = BundleReader.open(dir).tokenizer()
            assertTrue(tok is BundleHfTokenizer)
            assertEquals(listOf(0, 2), tok.stopIds)
            assertEquals(false, tok.addsBos)
            val hf = (tok as BundleHfTokenizer).hf
            val ids = tok.encode("<|im_start|>user\nhi<|im_end|>", addBos = true)
            assertArrayEquals(intArrayOf(1) + hf.encode("<|im_start|>user\nhi<|im_end|>"), ids)
            assertEquals("user\nhi", tok.decode(ids))
            manifest.getJSONObject("model").put("vocab_size", 100)
            File(dir, "manifest.json").writeText(manifest.toString())
            try {
                BundleReader.open(dir).tokenizer()
                fail("a tokenizer larger than the model's vocabulary was accepted")
            } catch (e: BundleException) {
                assertEquals(BundleErrorKind.INVALID, e.kind)
            }
        } finally {
            dir.deleteRecursively()
        }
    }

    data class Counts(var tokenizers: Int = 0, var encodes: Int = 0, var decodes: Int = 0, var streams: Int = 0)

    private fun check(data: JSONObject, base: File): Counts {
        val texts = data.getJSONArray("texts").let { a -> (0 until a.length()).map { a.getString(it) } }
        val counts = Counts()
        val failures = ArrayList<String>()
        for (t in Vectors.objects(data.getJSONArray("tokenizers"))) {
            val name = t.getString("name")
            val file = File(t.getString("file")).let { if (it.isAbsolute) it else File(base, t.getString("file")) }
            val tok = HfTokenizer.fromJson(file.readText())
            assertEquals(name, t.getInt("vocab_size"), tok.vocabSize)
            counts.tokenizers++
            val encode = t.getJSONArray("encode")
            for ((i, text) in texts.withIndex()) {
                val ids = Vectors.ints(encode.getJSONArray(i))
                val special = t.getJSONArray("encode_special").let { if (it.isNull(i)) ids else Vectors.ints(it.getJSONArray(i)) }
                val all = t.getJSONArray("decode").let { if (it.isNull(i)) text else it.getString(i) }
                val skip = t.getJSONArray("decode_skip").let { if (it.isNull(i)) all else it.getString(i) }
                val got = tok.encode(text, addSpecialTokens = false)
                if (!got.contentEquals(ids)) failures += "$name encode[$i] ${show(text)}: ${ids.toList()} != ${got.toList()}"
                if (!tok.encode(text, addSpecialTokens = true).contentEquals(special)) failures += "$name encode_special[$i]"
                if (tok.decode(ids, false) != all) failures += "$name decode[$i] ${show(all)} != ${show(tok.decode(ids, false))}"
                if (tok.decode(ids, true) != skip) failures += "$name decode_skip[$i] ${show(skip)} != ${show(tok.decode(ids, true))}"
                counts.encodes += 2
                counts.decodes += 2
            }
            for (s in Vectors.objects(t.getJSONArray("stream"))) {
                val ids = Vectors.ints(encode.getJSONArray(s.getInt("text")))
                checkStream(tok, ids, s, "$name stream[${s.getInt("text")}]", failures)
                counts.streams++
            }
            for ((k, r) in Vectors.objects(t.getJSONArray("random_ids")).withIndex()) {
                val ids = Vectors.ints(r.getJSONArray("ids"))
                if (tok.decode(ids, false) != r.getString("text")) failures += "$name random[$k] ${ids.toList()}: ${show(r.getString("text"))} != ${show(tok.decode(ids, false))}"
                if (tok.decode(ids, true) != r.getString("text_skip")) failures += "$name random_skip[$k]"
                checkStream(tok, ids, r, "$name random stream[$k]", failures)
                counts.decodes += 2
                counts.streams++
            }
        }
        if (failures.isNotEmpty()) fail("${failures.size} mismatches:\n" + failures.take(15).joinToString("\n"))
        return counts
    }

    private fun checkStream(tok: HfTokenizer, ids: IntArray, case: JSONObject, where: String, failures: MutableList<String>) {
        val decoder = tok.streamDecoder()
        val pieces = ids.map { decoder.push(it) }
        val expected = case.getJSONArray("pieces").let { a -> (0 until a.length()).map { a.getString(it) } }
        if (pieces != expected || decoder.flush() != case.getString("flush")) failures += "$where: ${expected.map(::show)} != ${pieces.map(::show)}"
    }

    private fun show(s: String): String = s.codePoints().toArray().joinToString("", "'", "'") { cp ->
        if (cp in 0x20..0x7E) String(Character.toChars(cp)) else "\\u{%x}".format(cp)
    }
}
