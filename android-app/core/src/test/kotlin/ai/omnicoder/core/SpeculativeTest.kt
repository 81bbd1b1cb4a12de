package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The scripted model of speculative.json: its KV is a real [PagedKvStore] holding one fp32 row per token (the
 * token id), and each row's logits come from the rows the store feeds + the call's tokens, so a wrong rollback
 * changes what it says.
 */
class ScriptedKvSession(
    override val contextLength: Int,
    private val vocab: Int,
    private val period: Int,
    private val layout: KvLayout,
    policy: PagingPolicy,
    rollbackSlack: Int,
) : SpeculativeSession {
    val store = PagedKvStore(layout, policy).also { it.rollbackSlack = rollbackSlack }
    val calls = ArrayList<List<Int>>() // [first position, ids...] per model call

    override val cacheLength: Int get() = store.length

    override fun reset() = store.reset()

    override fun verify(ids: IntArray, positions: IntArray): Array<FloatArray> {
        calls.add(listOf(positions[0]) + ids.toList())
        val name = layout.inputs[0]
        val fed = store.feeds().getValue(name)
        val buffer = ByteBuffer.wrap(fed.data).order(ByteOrder.nativeOrder())
        val seen = (0 until fed.shape[2].toInt()).map { buffer.getFloat(it * 4).toInt() }
        val history = seen + ids.toList()
        val rows = Array(ids.size) { scriptedLogits(history.subList(0, seen.size + it + 1), positions[it]) }
        val present = ByteBuffer.allocate(history.size * 4).order(ByteOrder.nativeOrder())
        history.forEach { present.putFloat(it.toFloat()) }
        val shape = longArrayOf(1, 1, history.size.toLong(), 1)
        store.update(mapOf(name to KvTensor(name, "float32", shape, present.array())), ids.size)
        return rows
    }

    override fun step(ids: IntArray, positions: IntArray): FloatArray = verify(ids, positions).last()

    override fun truncate(length: Int) = store.truncate(length)

    private fun scriptedTarget(history: List<Int>, position: Int): Int {
        if (position % period != period / 2) {
            for (n in 3 downTo 1) {
                val tail = history.subList(maxOf(0, history.size - n), history.size)
                for (j in 0 until history.size - n) if (history.subList(j, j + n) == tail) return history[j + n]
            }
        }
        val previous = if (history.size >= 2) history[history.size - 2] else 0
        return 1 + (history.last() * 7 + previous * 3 + position * 5) % (vocab - 2)
    }

    private fun scriptedLogits(history: List<Int>, position: Int): FloatArray {
        val target = scriptedTarget(history, position)
        val h = (target * 131L + position * 31L) % 100003
        val logits = FloatArray(vocab) { v -> (((h + v * 7919L) % 1000) / 100.0).toFloat() }
        logits[target] = (20.0 + (h % 7) / 4.0).toFloat()
        return logits
    }
}

/** speculative.json: the n-gram drafter step by step, and greedy runs with and without speculation. */
class SpeculativeTest {
    private val vectors = Vectors.load("speculative.json")

    private fun ints(array: JSONArray): List<Int> = Vectors.ints(array).toList()

    @Test
    fun ngramDrafterMatchesPython() {
        var steps = 0
        for (case in Vectors.objects(vectors.getJSONArray("drafter"))) {
            val drafter = NgramDrafter(
                case.getInt("max_draft"), case.getInt("max_ngram"), case.getInt("min_ngram"), case.getInt("patience"),
            )
            val tokens = ints(case.getJSONArray("tokens"))
            for ((i, step) in Vectors.objects(case.getJSONArray("steps")).withIndex()) {
                val where = "drafter max_draft=${case.getInt("max_draft")} step $i"
                val proposal = drafter.propose(tokens.subList(0, step.getInt("history")), step.getInt("room"))
                assertEquals(where, ints(step.getJSONArray("proposal")), proposal)
                drafter.observe(proposal.size, step.getInt("accepted"))
                val state = listOf(drafter.length, drafter.misses, drafter.pause, drafter.silent, drafter.indexed)
                assertEquals(where, ints(step.getJSONArray("state")), state)
                steps++
            }
        }
        assertTrue(steps >= 300)
    }

    private fun session(case: JSONObject): ScriptedKvSession {
        val paging = case.getJSONObject("paging")
        val policy = PagingPolicy(paging.getInt("page_len"), paging.getInt("window"), paging.getInt("sink_pages"))
        val context = case.getLong("context").coerceAtMost(Int.MAX_VALUE.toLong()).toInt()
        val layout = KvLayout(vectors.getJSONObject("kv"), 1)
        return ScriptedKvSession(context, case.getInt("vocab"), case.getInt("period"), layout, policy, case.getInt("k"))
    }

    @Test
    fun greedyRunsMatchPythonWithAndWithoutDrafts() {
        var turns = 0
        for (case in Vectors.objects(vectors.getJSONArray("runs"))) {
            val produced = HashMap<String, List<List<Int>>>()
            for (mode in listOf("plain", "speculative")) {
                val session = session(case)
                val maxDraft = if (mode == "speculative") case.getInt("k") else 0
                val sampler = Sampler(SamplingParams(temperature = 0.0, topK = 0, topP = 1.0))
                val chat = Conversation(session, sampler, ints(case.getJSONArray("stop_ids")), true, System::nanoTime, maxDraft)
                assertEquals(mode == "speculative", chat.speculative != null)
                val expected = Vectors.objects(case.getJSONArray(mode))
                val prompts = mutableListOf(Vectors.ints(case.getJSONArray("prompt")))
                if (!case.isNull("second_turn_prompt")) prompts.add(Vectors.ints(case.getJSONArray("second_turn_prompt")))
                assertEquals(expected.size, prompts.size)
                val tokens = ArrayList<List<Int>>()
                for ((turn, want) in expected.withIndex()) {
                    val where = "${case.getString("name")} $mode turn $turn"
                    val before = session.calls.size
                    val result = chat.generate(prompts[turn], case.getInt("max_new_tokens"))
                    assertEquals(where, ints(want.getJSONArray("tokens")), result.tokens)
                    assertEquals(where, want.getString("stop_reason"), result.stats.stopReason.label)
                    val wantCalls = want.getJSONArray("calls").let { a -> (0 until a.length()).map { ints(a.getJSONArray(it)) } }
                    assertEquals(where, wantCalls, session.calls.subList(before, session.calls.size))
                    assertEquals(where, want.getInt("draft_tokens"), result.stats.draftTokens)
                    assertEquals(where, want.getInt("accepted_tokens"), result.stats.acceptedTokens)
                    assertEquals(where, want.getInt("cache_length"), session.cacheLength)
                    if (want.isNull("pending")) {
                        assertTrue(where, chat.pending!! in chat.stopIds)
                    } else {
                        assertEquals(where, want.getInt("pending"), chat.pending)
                    }
                    tokens.add(result.tokens)
                    turns++
                }
                produced[mode] = tokens
            }
            if (case.getJSONObject("paging").getInt("window") == 0) {
                assertEquals(case.getString("name"), produced["plain"], produced["speculative"])
            }
        }
        assertTrue(turns >= 18)
    }

    @Test
    fun samplingDecodesPlainly() {
        val case = Vectors.objects(vectors.getJSONArray("runs")).first()
        val chat = Conversation(session(case), Sampler(SamplingParams(temperature = 0.8, seed = 3)), listOf(47), true, System::nanoTime, 8)
        assertNull(chat.speculative)
        val result = chat.generate(Vectors.ints(case.getJSONArray("prompt")), 5)
        assertEquals(0, result.stats.draftTokens)
        assertEquals(4, result.stats.modelCalls)
    }

    @Test
    fun pagedStoreRollsBackWithinTheSlack() {
        val kv = JSONObject(
            """{"heads": 2, "key_dim": 3, "value_dim": 3, "past_key": "k.{layer}", "past_value": "v.{layer}",
            "present_key": "pk.{layer}", "present_value": "pv.{layer}"}""",
        )
        val layout = KvLayout(kv, 2)
        val policy = PagingPolicy(pageLen = 4, window = 8, sinkPages = 1)
        val store = PagedKvStore(layout, policy).also { it.rollbackSlack = 6 }
        store.update(Vectors.fakePresents(layout, 0, 10), 10)
        repeat(30) {
            store.update(Vectors.fakePresents(layout, store.length, 7), 7) // a verify call of 7 tokens
            store.truncate(store.length - 6) // ... that kept the first only
            val fresh = PagedKvStore(layout, policy)
            fresh.update(Vectors.fakePresents(layout, 0, store.length), store.length)
            for (name in layout.inputs) {
                assertEquals(Vectors.fedTokens(fresh.feeds().getValue(name)), Vectors.fedTokens(store.feeds().getValue(name)))
            }
        }
        assertTrue(store.residentPages() <= 6)
        store.truncate(0)
        assertEquals(0, store.length)
        assertTrue(store.pages.isEmpty())
    }
}
