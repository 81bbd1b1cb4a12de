package ai.omnicoder.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test

/** The apps' memory check, memory-pressure policy and benchmark (pure logic; the screens only display them). */
class AppLogicTest {
    private fun manifest(files: Map<String, Long>): Manifest {
        val json = JSONObject(Vectors.dir.resolve("bundles/good/manifest.json").readText())
        val listed = JSONObject()
        for ((name, bytes) in files) listed.put(name, JSONObject().put("sha256", "0".repeat(64)).put("bytes", bytes))
        json.put("files", listed)
        json.getJSONObject("graph").put("file", "model.onnx")
        return Manifest(json)
    }

    @Test
    fun weightsAreTheGraphAndItsExternalDataLikePython() {
        val m = manifest(mapOf("model.onnx" to 1000L, "model.onnx.data" to 50_000L, "model.onnxx" to 7L, "tokenizer.json" to 300L))
        assertEquals(51_000L, MemoryCheck.weightsBytes(m))
        val coreml = manifest(mapOf("model.onnx" to 10L, "prefill.mlpackage/Data/weights.bin" to 90L, "prefill.mlpackage.txt" to 5L))
        assertEquals(105L, MemoryCheck.weightsBytes(coreml, listOf("prefill.mlpackage")))
    }

    @Test
    fun checkAddsWeightsOverheadAndKv() {
        val mib = MemoryCheck.MIB
        val check = MemoryCheck(weightsBytes = 200 * mib, kvBytesPerToken = 36_864, contextTokens = 8192, availableBytes = 1024 * mib)
        assertEquals(64 * mib + 50 * mib, check.overheadBytes)
        assertEquals(36_864L * 8192, check.kvBytes)
        assertEquals(200 * mib + 114 * mib + 288 * mib, check.totalBytes)
        assertTrue(check.fits)
        assertEquals((1024 - 314) * mib / 36_864, check.maxContext)
        val tight = MemoryCheck(200 * mib, 36_864, 32_768, 600 * mib)
        assertFalse(tight.fits)
        assertTrue(tight.loadable())
        assertEquals((600 - 314) * mib / 36_864, tight.maxContext)
        assertTrue(tight.summary().contains("KV fits for ${tight.maxContext} tokens"))
        val none = MemoryCheck(900 * mib, 36_864, 16, 600 * mib)
        assertEquals(0L, none.maxContext)
        assertFalse(none.loadable())
        assertTrue(none.summary().contains("weights do not fit"))
    }

    @Test
    fun pressureLevelsMapToActions() {
        assertEquals(PressureAction.NONE, PressureAction.forTrimLevel(PressureAction.TRIM_MEMORY_RUNNING_MODERATE))
        assertEquals(PressureAction.DROP_KV, PressureAction.forTrimLevel(PressureAction.TRIM_MEMORY_RUNNING_LOW))
        assertEquals(PressureAction.DROP_KV, PressureAction.forTrimLevel(PressureAction.TRIM_MEMORY_RUNNING_CRITICAL))
        assertEquals(PressureAction.NONE, PressureAction.forTrimLevel(PressureAction.TRIM_MEMORY_UI_HIDDEN))
        assertEquals(PressureAction.RELEASE_MODEL, PressureAction.forTrimLevel(PressureAction.TRIM_MEMORY_BACKGROUND))
        assertEquals(PressureAction.RELEASE_MODEL, PressureAction.forTrimLevel(80))
        assertEquals(PressureAction.DROP_KV, PressureAction.forMemoryWarning(false))
        assertEquals(PressureAction.RELEASE_MODEL, PressureAction.forMemoryWarning(true))
    }

    @Test
    fun benchmarkMeasuresWithTheClockAndSkipsTheWarmUp() {
        var now = 0L
        val session = object : ModelSession {
            override val contextLength = 4096
            override var cacheLength = 0
            override fun reset() {
                cacheLength = 0
            }

            override fun step(ids: IntArray, positions: IntArray): FloatArray {
                now += if (ids.size > 1) 200_000_000L else 10_000_000L // prefill 0.2 s, then 10 ms per token
                cacheLength += ids.size
                return FloatArray(8).also { it[3] = 1f }
            }
        }
        var sampled = 0L
        val result = Benchmark.run(session, IntArray(100) { 1 }, 11, 3, memory = { sampled += 1000; sampled }, clock = { now })
        assertEquals(3, result.runs.size)
        assertTrue(result.runs.all { it.generatedTokens == 11 && it.promptTokens == 100 })
        assertEquals(0.2, result.timeToFirstTokenSeconds, 1e-9)
        assertEquals(500.0, result.prefillTokensPerSecond, 1e-6)
        assertEquals(100.0, result.decodeTokensPerSecond, 1e-6)
        assertEquals(3000L, result.peakMemoryBytes)
        assertEquals(0, session.cacheLength)
        assertEquals(2.5, BenchmarkResult.median(listOf(4.0, 1.0, 2.0, 3.0)), 0.0)
    }
}
