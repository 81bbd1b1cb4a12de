package ai.omnicoder.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.file.Files

/** What the vectors do not cover: symlinks, target checks, stopping, a full context, bounded paged memory. */
class CoreTest {
    private fun copyGood(): File {
        val dir = Files.createTempDirectory("omnicoder-bundle").toFile()
        File(Vectors.dir, "bundles/good").copyRecursively(dir, overwrite = true)
        return dir
    }

    private fun expectKind(kind: BundleErrorKind, block: () -> Unit) {
        try {
            block()
            fail("expected $kind")
        } catch (e: BundleException) {
            assertEquals(kind, e.kind)
        }
    }

    @Test
    fun symlinkOutOfTheBundleIsRejected() {
        val dir = copyGood()
        val outside = File.createTempFile("outside", ".onnx")
        outside.writeBytes(File(dir, "model.onnx").readBytes())
        File(dir, "model.onnx").delete()
        Files.createSymbolicLink(File(dir, "model.onnx").toPath(), outside.toPath())
        expectKind(BundleErrorKind.PATH) { BundleReader.open(dir) }
        dir.deleteRecursively()
    }

    @Test
    fun targetIsChecked() {
        val dir = copyGood()
        val bundle = BundleReader.open(dir)
        assertEquals(bundle, bundle.requireTarget("onnx"))
        expectKind(BundleErrorKind.TARGET) { bundle.requireTarget("coreml") }
        expectKind(BundleErrorKind.NOT_FOUND) { BundleReader.open(File(dir, "nope")) }
        val manifest = JSONObject(File(dir, "manifest.json").readText())
        manifest.getJSONObject("graph").getJSONObject("kv").put("io", "shared")
        File(dir, "manifest.json").writeText(manifest.toString())
        expectKind(BundleErrorKind.TARGET) { Bundle(dir, Manifest(manifest)).requireTarget("onnx") }
        File(dir, "manifest.json").writeText("{not json")
        expectKind(BundleErrorKind.INVALID) { BundleReader.open(dir) }
        dir.deleteRecursively()
    }

    @Test
    fun stopKeepsThePendingTokenForTheNextTurn() {
        val session = FakeSession(64, 272)
        val chat = Conversation(session, Sampler(SamplingParams(temperature = 0.0)), eosId = -1)
        var seen = 0
        val first = chat.generate(intArrayOf(256, 1, 2), 50, shouldStop = { seen >= 3 }) { seen++ }
        assertEquals(StopReason.STOPPED, first.stats.stopReason)
        assertEquals(3, first.tokens.size)
        assertEquals(first.tokens.last(), chat.pending)
        assertEquals(5, session.cacheLength) // the prompt + 2 fed tokens; the 3rd is pending
        chat.generate(intArrayOf(9), 1)
        assertEquals(listOf(2, 5), session.calls[session.calls.size - 1]) // pending + new prompt at position 5
    }

    @Test
    fun fullContextIsAnError() {
        val chat = Conversation(FakeSession(8, 272), Sampler(SamplingParams(temperature = 0.0)), eosId = -1)
        assertEquals(StopReason.CONTEXT, chat.generate(intArrayOf(256, 1, 2), 50).stats.stopReason)
        try {
            chat.generate(intArrayOf(3), 5)
            fail("expected ContextFullException")
        } catch (e: ContextFullException) {
            assertTrue(e.message!!.contains("context"))
        }
        chat.reset()
        assertNull(chat.pending)
        assertEquals(StopReason.CONTEXT, chat.generate(intArrayOf(256), 50).stats.stopReason)
    }

    @Test
    fun windowedStoreKeepsMemoryBounded() {
        val kv = JSONObject(
            """{"layout": "BNSH", "kind": "gqa", "heads": 2, "key_dim": 4, "value_dim": 4,
            "past_key": "past_key_values.{layer}.key", "past_value": "past_key_values.{layer}.value",
            "present_key": "present.{layer}.key", "present_value": "present.{layer}.value"}""",
        )
        val layout = KvLayout(kv, 2)
        val store = PagedKvStore(layout, PagingPolicy(pageLen = 4, window = 8, sinkPages = 1))
        store.update(Vectors.fakePresents(layout, 0, 10), 10)
        repeat(100) { store.update(Vectors.fakePresents(layout, store.length, 1, leading = 3), 1) }
        val pageBytes = layout.inputs.indices.sumOf { 2L * 4 * layout.rowBytes(it) }
        assertTrue(store.residentPages() <= 5)
        assertEquals(store.residentPages() * pageBytes, store.residentBytes())
        val fed = Vectors.fedTokens(store.feeds().getValue("past_key_values.1.value"))
        assertEquals(listOf(0, 1, 2, 3), fed.take(4)) // the sink page
        assertEquals(store.length - 1, fed.last())
        assertTrue(fed.size <= 4 + 8 + 4)
    }

    @Test
    fun samplerRejectsBadParameters() {
        for (params in listOf(SamplingParams(temperature = -1.0), SamplingParams(topK = -1), SamplingParams(topP = 0.0))) {
            try {
                Sampler(params)
                fail("expected IllegalArgumentException for $params")
            } catch (e: IllegalArgumentException) {
                assertTrue(e.message!!.isNotEmpty())
            }
        }
    }
}
