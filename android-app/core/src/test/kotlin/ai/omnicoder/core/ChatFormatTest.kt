package ai.omnicoder.core

import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.file.Files

/** A model that answers with a script, token by token, and records every token it is fed. */
class ScriptedSession(private val vocab: Int) : ModelSession {
    override val contextLength: Int = 1 shl 16
    override var cacheLength = 0
        private set
    val fed = ArrayList<Int>()
    val script = ArrayDeque<Int>()

    override fun reset() {
        cacheLength = 0
    }

    override fun step(ids: IntArray, positions: IntArray): FloatArray {
        assertArrayEquals(IntArray(ids.size) { cacheLength + it }, positions)
        fed += ids.toList()
        cacheLength += ids.size
        return FloatArray(vocab).also { it[script.removeFirst()] = 1f }
    }
}

/** Chat formatting against tests/vectors/chat_format.json (Python's ChatSession over the rendered template). */
class ChatFormatTest {
    private val data = Vectors.load("chat_format.json")

    private fun tokenizer(case: JSONObject): BundleHfTokenizer {
        val hf = HfTokenizer.fromJson(File(Vectors.dir, case.getString("tokenizer")).readText())
        val stops = Vectors.ints(case.getJSONArray("stop_ids")).toList()
        return BundleHfTokenizer(hf, case.getInt("bos_id"), case.getInt("eos_id"), case.getBoolean("add_bos"), stops)
    }

    @Test
    fun conversationsFeedWhatPythonFeeds() {
        var turns = 0
        for (case in Vectors.objects(data.getJSONArray("cases"))) {
            val tok = tokenizer(case)
            val format = ChatFormat.fromJson(case.optJSONObject("chat_format"))
            if (format == null) {
                assertEquals(0, case.getJSONArray("conversations").length())
                continue
            }
            val prompter = ChatPrompter(tok, format)
            assertTrue(!prompter.feedsStopToken)
            for (conv in Vectors.objects(case.getJSONArray("conversations"))) {
                val system = if (conv.isNull("system")) null else conv.getString("system")
                val session = ScriptedSession(tok.vocabSize)
                val chat = Conversation(session, Sampler(SamplingParams(temperature = 0.0)), tok.stopIds, prompter.feedsStopToken)
                for ((k, turn) in Vectors.objects(conv.getJSONArray("turns")).withIndex()) {
                    val where = "${case.getString("name")} system=${system != null} turn $k"
                    val reply = Vectors.ints(turn.getJSONArray("reply_ids")).toList()
                    val stop = if (turn.isNull("stop_id")) null else turn.getInt("stop_id")
                    session.script.clear()
                    session.script.addAll(reply + listOfNotNull(stop))
                    session.fed.clear()
                    val ids = prompter.ids(turn.getString("user"), !chat.started, system)
                    val result = chat.generate(ids, reply.size + if (stop != null) 1 else 0)
                    assertEquals(where, reply, result.tokens)
                    assertEquals(where, if (stop != null) StopReason.EOS else StopReason.LIMIT, result.stats.stopReason)
                    assertEquals(where, Vectors.ints(turn.getJSONArray("fed")).toList(), session.fed)
                    turns++
                }
            }
        }
        assertTrue(turns >= 24)
        println("chat format vectors: $turns turns")
    }

    @Test
    fun trimStripsWhatPythonStrips() {
        for (case in Vectors.objects(data.getJSONArray("strip"))) {
            assertEquals(case.getString("stripped"), ChatFormat.pyStrip(case.getString("text")))
        }
        val trimmed = ChatFormat("", null, RolePiece("[u]", "|"), RolePiece("[a]", "|"), "[a]", trim = true)
        assertEquals("[u]hi|[a]", trimmed.firstTurn("\u00a0 hi\n"))
    }

    @Test
    fun everyStopIdEndsATurn() {
        val case = Vectors.objects(data.getJSONArray("cases")).first()
        val tok = tokenizer(case)
        assertTrue(tok.stopIds.size >= 2)
        for (stop in tok.stopIds) {
            val session = ScriptedSession(tok.vocabSize).apply { script.addAll(listOf(300, stop, 301)) }
            val chat = Conversation(session, Sampler(SamplingParams(temperature = 0.0)), tok.stopIds, false)
            val result = chat.generate(intArrayOf(5, 6), 10)
            assertEquals(listOf(300), result.tokens)
            assertEquals(StopReason.EOS, result.stats.stopReason)
        }
    }

    @Test
    fun withoutAFormatTheUserTextIsThePromptAndBosOnlyWhenTheTokenizerAddsOne() {
        val case = Vectors.objects(data.getJSONArray("cases")).first { it.getString("name") == "bos-first" }
        val adds = tokenizer(case)
        val plain = ChatPrompter(adds, null)
        assertTrue(plain.feedsStopToken)
        assertEquals(3, plain.ids("hi", firstTurn = true)[0])
        assertArrayEquals(adds.encode("\nhi"), plain.ids("hi", firstTurn = false))
        val noBos = BundleHfTokenizer(adds.hf, 3, 2, false, listOf(2))
        assertArrayEquals(noBos.encode("hi"), ChatPrompter(noBos, null).ids("hi", firstTurn = true))
        val bytes = ByteTokenizer()
        assertEquals(bytes.bosId, ChatPrompter(bytes, null).ids("hi", firstTurn = true)[0])
    }

    @Test
    fun aTemplateWithoutSystemMessagesGetsTheSystemTextInTheUserTurn() {
        val format = ChatFormat("<s>", null, RolePiece("[u]", "\n"), RolePiece("[a]", "\n"), "[a]")
        assertEquals("<s>[u]Be brief.\n\nhi\n[a]", format.firstTurn("hi", "Be brief."))
        assertEquals("<s>[u]hi\n[a]", format.firstTurn("hi", ""))
        assertEquals("\n[u]more\n[a]", format.nextTurn("more"))
    }

    @Test
    fun aSmolLm2BundleWithAChatFormatIsAccepted() {
        val case = Vectors.objects(data.getJSONArray("cases")).first { it.getString("name") == "smollm2" }
        val dir = Files.createTempDirectory("chat-bundle").toFile()
        try {
            File(Vectors.dir, "bundles/good").listFiles()!!.forEach { it.copyTo(File(dir, it.name)) }
            File(Vectors.dir, case.getString("tokenizer")).copyTo(File(dir, "tokenizer.json"), overwrite = true)
            val manifest = JSONObject(File(dir, "manifest.json").readText())
            manifest.getJSONObject("model").put("vocab_size", 2560).put("bos_id", -1).put("eos_id", 0)
            manifest.put(
                "tokenizer",
                JSONObject().put("file", "tokenizer.json").put("type", "huggingface").put("add_bos", false)
                    .put("stop_ids", case.getJSONArray("stop_ids")).put("chat_format", case.getJSONObject("chat_format")),
            )
            val tokFile = File(dir, "tokenizer.json")
            manifest.getJSONObject("files").put("tokenizer.json", JSONObject().put("sha256", BundleReader.sha256(tokFile)).put("bytes", tokFile.length()))
            File(dir, "manifest.json").writeText(manifest.toString())
            val prompter = BundleReader.open(dir).prompter()
            val first = Vectors.objects(Vectors.objects(case.getJSONArray("conversations"))[0].getJSONArray("turns"))[0]
            val ids = prompter.ids(first.getString("user"), firstTurn = true).toList()
            assertEquals(Vectors.ints(first.getJSONArray("fed")).toList().subList(0, ids.size), ids)
            manifest.getJSONObject("tokenizer").put("chat_format", JSONObject().put("preamble", ""))
            File(dir, "manifest.json").writeText(manifest.toString())
            try {
                BundleReader.open(dir)
                org.junit.Assert.fail("a malformed chat_format was accepted")
            } catch (e: BundleException) {
                assertEquals(BundleErrorKind.INVALID, e.kind)
            }
            manifest.getJSONObject("tokenizer").remove("chat_format")
            File(dir, "manifest.json").writeText(manifest.toString())
            assertNull(BundleReader.open(dir).prompter().format)
        } finally {
            dir.deleteRecursively()
        }
    }
}
