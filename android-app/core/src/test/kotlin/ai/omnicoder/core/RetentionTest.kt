package ai.omnicoder.core

import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import kotlin.random.Random

/** The retention store, its policy and fp16 / NF4 / u8 helpers against tests/vectors/retention.json, bit for bit. */
class RetentionTest {
    private val data by lazy { Vectors.load("retention.json") }

    @Test
    fun fp16MatchesNumpy() {
        val fp16 = data.getJSONObject("fp16")
        val values = floats(fp16.getString("values"))
        val halves = fp16.getString("half_bits").chunked(4).map { it.toInt(16) }
        val expected = floats(fp16.getString("expected"))
        for (i in values.indices) {
            assertEquals("value ${values[i]}", halves[i], Fp16.toBits(values[i]).toInt() and 0xffff)
            assertEquals("value ${values[i]}", expected[i].toRawBits(), Fp16.round(values[i]).toRawBits())
        }
    }

    @Test
    fun roundTripsMatchNumpy() {
        assertArrayEquals(bits(floats(data.getString("nf4_levels"))), bits(KvCompress.NF4_LEVELS))
        assertArrayEquals(bits(floats(data.getString("nf4_midpoints"))), bits(KvCompress.NF4_MIDPOINTS))
        for (case in Vectors.objects(data.getJSONArray("round_trips"))) {
            val values = floats(case.getString("rows"))
            val width = case.getInt("width")
            val codec = KvCompress(case.getString("dtype"), case.getInt("group"))
            val out = codec.roundTrip(values, values.size / width, width)
            assertArrayEquals(case.getString("name"), bits(floats(case.getString("expected"))), bits(out))
            assertEquals(codec.packedBytes(values.size / width, width), codec.encode(values, values.size / width, width).size)
        }
    }

    @Test
    fun policiesFromSidecarsLikeTheRunner() {
        assertEquals(data.getInt("chunk"), RetentionStore.CHUNK)
        for (case in Vectors.objects(data.getJSONArray("policies"))) {
            val override = if (case.isNull("budget_override")) null else case.getLong("budget_override")
            val built = RetentionPolicy.fromSidecar(case.getJSONObject("sidecar"), case.getString("retention"), override)
            assertEquals(policy(case.getJSONObject("expected")), built)
        }
        for (case in Vectors.objects(data.getJSONArray("invalid_policies"))) {
            try {
                RetentionPolicy.fromSidecar(case.getJSONObject("sidecar"), case.getString("retention"))
                fail("expected ${case.getString("name")} to be refused")
            } catch (e: RetentionException) {
                assertEquals(case.getString("python_message"), e.message)
            }
        }
    }

    @Test
    fun storeReplaysEveryCase() {
        for (case in Vectors.objects(data.getJSONArray("cases"))) {
            val name = case.getString("name")
            val layout = KvLayout(case.getJSONObject("kv"), case.getInt("n_layers"))
            val policy = policy(case.getJSONObject("policy"))
            if (case.has("sidecar")) {
                assertEquals(policy, RetentionPolicy.fromSidecar(case.getJSONObject("sidecar"), policy.policy))
            }
            val store = RetentionStore(layout, policy)
            assertEquals(name, case.getLong("token_bytes"), store.tokenBytes)
            assertEquals(name, case.getLong("compress_bytes"), store.compressBytes)
            assertEquals(name, case.getInt("recent"), store.recent)
            for (step in Vectors.objects(case.getJSONArray("steps"))) {
                if (step.has("truncate")) {
                    store.truncate(step.getInt("truncate"))
                } else {
                    val n = step.getInt("new_tokens")
                    val presents = presents(layout, step.getJSONObject("presents"), n, leading = store.heldTokens)
                    store.observe(if (step.isNull("retention")) null else floats(step.getString("retention")))
                    if (step.has("error")) {
                        try {
                            store.update(presents, n)
                            fail("$name: expected the budget to be too small")
                        } catch (e: RetentionException) {
                            assertEquals(step.getString("error"), e.message)
                        }
                        break
                    }
                    store.update(presents, n)
                }
                assertEquals(name, step.getInt("length"), store.length)
                assertEquals(name, Vectors.ints(step.getJSONArray("positions")).toList(), store.positions().toList())
                assertEquals(name, Vectors.ints(step.getJSONArray("compressed")).map { it == 1 }, store.compressed().toList())
                assertEquals(name, step.getLong("nbytes"), store.nbytes())
                assertEquals(name, step.getInt("evicted"), store.evicted)
                assertEquals(name, step.getString("feeds_sha256"), sha256(store.feeds()))
            }
        }
    }

    @Test
    fun sidecarsTheAppCannotUseAreRefused() {
        val good = Vectors.objects(data.getJSONArray("policies")).first().getJSONObject("sidecar")
        val bad = listOf(
            JSONObject(good.toString()).put("output", "logits") to "output",
            JSONObject(good.toString()).put("class_rule", "max") to "class_rule",
            JSONObject(good.toString()).put("sink_tokens", 1.5) to "sink_tokens",
            JSONObject(good.toString()).put("recent_fraction", 1.5) to "recent_fraction",
            JSONObject(good.toString()).also { it.getJSONObject("compress").put("group", 0) } to "group",
            JSONObject(good.toString()).also { it.remove("compress") } to "compress",
        )
        for ((sidecar, what) in bad) expectRefused(what) { RetentionPolicy.fromSidecar(sidecar) }
        expectRefused("h2o") { RetentionPolicy.fromSidecar(good, "h2o") }
        expectRefused("budget") { RetentionPolicy.fromSidecar(good, budgetBytes = 0) }
        val u8 = KvLayout(JSONObject(KV).put("storage", JSONObject("""{"dtype": "u8"}""")), 2)
        expectRefused("fp32") { RetentionStore(u8, RetentionPolicy(4096)) }
    }

    @Test
    fun choiceIsRetentionOnlyWithSidecarAndOutput() {
        val sidecar = Vectors.objects(data.getJSONArray("policies")).first().getJSONObject("sidecar")
        val own = sidecar.getLong("budget_bytes")
        assertNull(KvChoice.choose(null, true, "fp32", 1L shl 30).retention)
        val noOutput = KvChoice.choose(sidecar, false, "fp32", 1L shl 30)
        assertNull(noOutput.retention)
        assertTrue(noOutput.note.contains("no retention output"))
        val roomy = KvChoice.choose(sidecar, true, "fp32", 1L shl 30)
        assertEquals(RetentionPolicy.fromSidecar(sidecar), roomy.retention)
        assertTrue(roomy.note.contains("the sidecar's"))
        val tight = KvChoice.choose(sidecar, true, "fp32", own / 2)
        assertEquals(own / 2, tight.retention!!.budgetBytes)
        assertTrue(tight.note.contains("device memory"))
        val quantized = KvChoice.choose(sidecar, true, "nf4", 1L shl 30)
        assertNull(quantized.retention)
        assertTrue(quantized.note.contains("fp32"))
    }

    @Test
    fun longRunStaysWithinTheBudget() {
        val layout = KvLayout(JSONObject(KV), 2)
        val store = RetentionStore(layout, RetentionPolicy(budgetBytes = 24L * 128, sinkTokens = 2, compressGroup = 4))
        val random = Random(5)
        repeat(3) {
            store.reset()
            while (store.length < 300) {
                val n = if (store.length == 0) RetentionStore.CHUNK else 1
                val presents = Vectors.fakePresents(layout, store.length, n, leading = store.heldTokens)
                store.observe(FloatArray(3 * n) { random.nextInt(-4, 5) / 2f })
                store.update(presents, n)
                assertTrue(store.nbytes() <= store.policy.budgetBytes)
                assertTrue(store.heldTokens <= store.maxHeldTokens())
            }
            val positions = store.positions().toList()
            assertEquals(positions.sorted(), positions)
            assertEquals(listOf(0, 1), positions.take(2))
            assertEquals((300 - store.recent until 300).toList(), positions.takeLast(store.recent))
            assertTrue(store.compressed().takeLast(store.recent).none { it })
            assertEquals(300, store.heldTokens + store.evicted)
            val fed = Vectors.fedTokens(store.feeds().getValue("past_key_values.1.value"))
            assertEquals(positions.takeLast(store.recent), fed.takeLast(store.recent))
        }
    }

    private fun expectRefused(what: String, block: () -> Unit) {
        try {
            block()
            fail("expected $what to be refused")
        } catch (e: RetentionException) {
            assertTrue("${e.message} should mention $what", e.message!!.contains(what))
        }
    }

    private fun policy(p: JSONObject) = RetentionPolicy(
        p.getLong("budget_bytes"), p.getString("policy"), p.getInt("sink_tokens"), p.getInt("recent_window"),
        p.getInt("compress_group"), p.getString("compress"), p.getDouble("recent_fraction"),
    )

    /** The step's new rows after `leading` rows of -1, as a graph returns past + new: [1, heads, leading + n, width]. */
    private fun presents(layout: KvLayout, hex: JSONObject, n: Int, leading: Int): Map<String, KvTensor> =
        layout.inputs.withIndex().associate { (i, name) ->
            val width = layout.widths[i]
            val rows = floats(hex.getString(name))
            val total = leading + n
            val buffer = ByteBuffer.allocate(layout.heads * total * width * 4).order(ByteOrder.nativeOrder())
            for (head in 0 until layout.heads) {
                repeat(leading * width) { buffer.putFloat(-1f) }
                for (v in 0 until n * width) buffer.putFloat(rows[head * n * width + v])
            }
            val shape = longArrayOf(1, layout.heads.toLong(), total.toLong(), width.toLong())
            name to KvTensor(name, "float32", shape, buffer.array())
        }

    private fun sha256(feeds: Map<String, KvTensor>): String {
        val digest = MessageDigest.getInstance("SHA-256")
        for (tensor in feeds.values) {
            val floats = ByteBuffer.wrap(tensor.data).order(ByteOrder.nativeOrder()).asFloatBuffer()
            val le = ByteBuffer.allocate(tensor.data.size).order(ByteOrder.LITTLE_ENDIAN)
            while (floats.hasRemaining()) le.putFloat(floats.get())
            digest.update(le.array())
        }
        return digest.digest().joinToString("") { "%02x".format(it) }
    }

    private fun floats(hex: String): FloatArray = FloatArray(hex.length / 8) {
        java.lang.Float.intBitsToFloat(hex.substring(8 * it, 8 * it + 8).toLong(16).toInt())
    }

    private fun bits(values: FloatArray): IntArray = IntArray(values.size) { values[it].toRawBits() }

    companion object {
        private const val KV = """{"layout": "BNSH", "kind": "gqa", "heads": 2, "key_dim": 4, "value_dim": 4,
            "past_key": "past_key_values.{layer}.key", "past_value": "past_key_values.{layer}.value",
            "present_key": "present.{layer}.key", "present_value": "present.{layer}.value"}"""
    }
}
