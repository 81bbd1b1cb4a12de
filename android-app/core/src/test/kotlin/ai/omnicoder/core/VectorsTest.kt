package ai.omnicoder.core

import org.json.JSONArray
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/** The Kotlin core against tests/vectors/: the same answers as the Python runtime. */
class VectorsTest {
    @Test
    fun tokenizer() {
        val data = Vectors.load("tokenizer.json")
        val tok = ByteTokenizer.fromJson(data.getJSONObject("tokenizer_json").toString())
        for (case in Vectors.objects(data.getJSONArray("encode"))) {
            val text = Vectors.utf16(case.getJSONArray("utf16"))
            if (!case.isNull("text")) assertEquals(case.getString("text"), text)
            val ids = Vectors.ints(case.getJSONArray("ids"))
            assertArrayEquals(ids, tok.encode(text, case.getBoolean("add_bos")))
            assertEquals(text, tok.decode(ids))
        }
        for (case in Vectors.objects(data.getJSONArray("decode"))) {
            assertEquals(Vectors.utf16(case.getJSONArray("utf16")), tok.decode(Vectors.ints(case.getJSONArray("ids"))))
        }
        for (case in Vectors.objects(data.getJSONArray("stream"))) {
            val decoder = tok.streamDecoder()
            val pieces = Vectors.ints(case.getJSONArray("ids")).map { decoder.push(it) }
            val expected = case.getJSONArray("pieces")
            assertEquals(case.toString(), (0 until expected.length()).map { expected.getString(it) }, pieces)
            assertEquals(case.getString("flush"), decoder.flush())
        }
    }

    @Test
    fun sampling() {
        val data = Vectors.load("sampling.json")
        for (case in Vectors.objects(data.getJSONArray("rng"))) {
            val rng = SplitMix64(case.getLong("seed"))
            val expected = case.getJSONArray("u64")
            for (i in 0 until expected.length()) assertEquals(expected.getString(i), "%016x".format(rng.nextLong()))
        }
        val tolerance = data.getDouble("probability_tolerance")
        for (case in Vectors.objects(data.getJSONArray("cases"))) {
            val params = SamplingParams(case.getDouble("temperature"), case.getInt("top_k"), case.getDouble("top_p"), case.getLong("seed"))
            val logitsJson = case.getJSONArray("logits")
            val logits = FloatArray(logitsJson.length()) { logitsJson.getDouble(it).toFloat() }
            val probs = Sampler(params).probabilities(logits)
            val expected = case.getJSONArray("probabilities")
            for (i in probs.indices) assertEquals(case.getString("name"), expected.getDouble(i), probs[i], tolerance)
            val sampler = Sampler(params)
            val tokens = Vectors.ints(case.getJSONArray("tokens"))
            assertArrayEquals(case.getString("name"), tokens, IntArray(tokens.size) { sampler.sample(logits) })
        }
    }

    @Test
    fun kvLayout() {
        for (case in Vectors.objects(Vectors.load("kv_layout.json").getJSONArray("cases"))) {
            val layout = KvLayout(case.getJSONObject("kv"), case.getInt("n_layers"))
            assertEquals(strings(case.getJSONArray("inputs")), layout.inputs)
            assertEquals(strings(case.getJSONArray("outputs")), layout.outputs)
            assertEquals(Vectors.ints(case.getJSONArray("widths")).toList(), layout.widths)
            assertEquals(strings(case.getJSONArray("dtypes")), layout.dtypes)
            val slots = case.getJSONArray("key_slots")
            assertEquals((0 until slots.length()).map { strings(slots.getJSONArray(it)) }, layout.keySlots)
            assertEquals(case.getLong("bytes_per_token"), layout.bytesPerToken())
            val budget = PageBudget.fromSidecar(case.getJSONObject("sidecar"))
            assertEquals(case.getLong("bytes_per_token").toDouble(), budget.bytesPerToken, 0.0)
        }
    }

    @Test
    fun paging() {
        val data = Vectors.load("paging.json")
        for (case in Vectors.objects(data.getJSONArray("pages"))) {
            val layout = KvLayout(case.getJSONObject("kv"), case.getInt("n_layers"))
            val policy = PagingPolicy(case.getInt("page_len"), case.getInt("window"), case.getInt("sink_pages"))
            val store = PagedKvStore(layout, policy)
            for (step in Vectors.objects(case.getJSONArray("steps"))) {
                val feeds = store.feeds()
                assertEquals(Vectors.ints(step.getJSONArray("fed_tokens")).toList(), Vectors.fedTokens(feeds.getValue(layout.inputs[0])))
                val count = step.getInt("new_tokens")
                store.update(Vectors.fakePresents(layout, store.length, count, leading = feeds.values.first().shape[2].toInt()), count)
                assertEquals(step.getInt("length"), store.length)
                val pages = step.getJSONArray("pages")
                assertEquals(
                    (0 until pages.length()).map { Vectors.ints(pages.getJSONArray(it)).toList() },
                    store.pages.map { listOf(it.start, it.filled) },
                )
                assertEquals(Vectors.ints(step.getJSONArray("attended")).toList(), store.attendedPages())
                assertTrue(store.residentPages() <= store.attendedPages().size + 1)
            }
        }
        for (case in Vectors.objects(data.getJSONArray("sizing"))) {
            val budget = PageBudget.fromSidecar(case.getJSONObject("sidecar"))
            assertEquals(case.getLong("page_bytes"), budget.pageBytes)
            val plan = PagingPlan.plan(budget, case.getInt("context"), case.getLong("budget_bytes"), case.getInt("model_context"))
            val expected = case.optJSONObject("plan")
            if (expected == null) {
                assertEquals(null, plan)
                continue
            }
            val got = plan ?: return fail("expected a plan for $case")
            assertEquals(expected.getBoolean("fits_whole"), got.fitsWhole)
            assertEquals(expected.getInt("window"), got.window)
            assertEquals(expected.getInt("sink_pages"), got.sinkPages)
            assertEquals(expected.getInt("predicted_pages"), got.predictedPages)
            assertEquals(expected.getInt("resident_pages"), got.residentPages)
            assertEquals(expected.getLong("resident_bytes"), got.residentBytes)
            assertEquals(expected.getLong("total_bytes"), got.totalBytes)
            assertEquals(expected.getLong("spill_bytes"), got.spillBytes)
        }
    }

    @Test
    fun decodeLoop() {
        for (case in Vectors.objects(Vectors.load("decode_loop.json").getJSONArray("cases"))) {
            val session = FakeSession(case.getInt("context"), case.getInt("vocab"))
            val s = case.getJSONObject("sampling")
            val sampler = Sampler(SamplingParams(s.getDouble("temperature"), s.getInt("top_k"), s.getDouble("top_p"), s.getLong("seed")))
            val chat = Conversation(session, sampler, case.getInt("eos_id"))
            val max = case.getInt("max_new_tokens")
            val streamed = ArrayList<Int>()
            val first = chat.generate(Vectors.ints(case.getJSONArray("prompt")), max) { streamed.add(it) }
            val name = case.getString("name")
            assertEquals(name, Vectors.ints(case.getJSONArray("tokens")).toList(), first.tokens)
            assertEquals(first.tokens, streamed)
            assertEquals(name, case.getString("stop_reason"), first.stats.stopReason.label)
            assertEquals(calls(case.getJSONArray("calls")), session.calls)
            val follow = case.optJSONObject("continuation") ?: continue
            assertEquals(follow.getInt("pending"), chat.pending)
            session.calls.clear()
            val more = chat.generate(Vectors.ints(follow.getJSONArray("prompt")), max)
            assertEquals(name, Vectors.ints(follow.getJSONArray("tokens")).toList(), more.tokens)
            assertEquals(follow.getString("stop_reason"), more.stats.stopReason.label)
            assertEquals(calls(follow.getJSONArray("calls")), session.calls)
        }
    }

    @Test
    fun bundles() {
        for (case in Vectors.objects(Vectors.load("bundles.json").getJSONArray("cases"))) {
            val dir = File(Vectors.dir, "bundles/" + case.getString("name"))
            val expect = case.getString("expect")
            try {
                val bundle = BundleReader.open(dir)
                assertEquals("ok", expect)
                assertArrayEquals(intArrayOf(97), bundle.tokenizer().encode("a"))
                assertEquals(16, bundle.sidecar("kv_paging")!!.getInt("page_len"))
                assertEquals(listOf("past_key_values.0.key", "past_key_values.1.key"), bundle.kvLayout().inputs)
            } catch (e: BundleException) {
                assertEquals(case.getString("name"), expect.uppercase(), e.kind.name)
            }
        }
    }

    private fun strings(array: JSONArray): List<String> = (0 until array.length()).map { array.getString(it) }

    private fun calls(array: JSONArray): List<List<Int>> = (0 until array.length()).map { Vectors.ints(array.getJSONArray(it)).toList() }
}
