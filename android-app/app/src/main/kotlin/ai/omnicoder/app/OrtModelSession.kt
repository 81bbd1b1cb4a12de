package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.KvChoice
import ai.omnicoder.core.KvTensor
import ai.omnicoder.core.ModelSession
import ai.omnicoder.core.PagedKvStore
import ai.omnicoder.core.PagingPolicy
import ai.omnicoder.core.RetentionStore
import ai.omnicoder.core.SpeculativeSession
import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import org.json.JSONObject
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.LongBuffer

/**
 * The bundle's decode-step graph in ONNX Runtime (the Android API), behind the core's ModelSession.
 * KV I/O as in runtimes/onnx_session.py: `past_key_values.{i}.key[suffix]` in, `present.{i}.key[suffix]` out.
 * The KV rows live in the core: in a RetentionStore when the bundle has a retention sidecar and the graph outputs
 * `retention` (the store evicts / compresses under the budget between calls of RetentionStore.CHUNK tokens), else
 * in a PagedKvStore that feeds only the attended pages. The two are exclusive, as in the Python runner.
 * As a SpeculativeSession it verifies n-gram drafts: `verify` returns every fed token's logits and `truncate` rolls
 * the store back (the paged store keeps `maxDraft` tokens behind its window for that).
 */
class OrtModelSession(
    bundle: Bundle,
    private val policy: PagingPolicy,
    retentionSidecar: JSONObject? = null,
    kvBudgetBytes: Long = 0,
    threads: Int = 4,
    maxDraft: Int = DEFAULT_MAX_DRAFT,
) : SpeculativeSession, AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    private val layout = bundle.kvLayout()
    private val presentToPast = layout.outputs.zip(layout.inputs).toMap()
    private val modelContext = bundle.manifest.model.contextLength
    private val vocab = bundle.manifest.model.vocabSize

    /** What the screen says about the KV store: retention and its budget, or why the sidecar was ignored. */
    val kvNote: String
    val retention: RetentionStore?
    val pages: PagedKvStore?
    private val wanted: Set<String>

    init {
        bundle.requireTarget("onnx")
        val options = OrtSession.SessionOptions().apply {
            setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
            setIntraOpNumThreads(threads)
            setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
        }
        session = env.createSession(bundle.file(bundle.manifest.graphFile).path, options)
        val choice = KvChoice.choose(retentionSidecar, RETENTION in session.outputNames, layout.kvDtype, kvBudgetBytes)
        kvNote = choice.note
        retention = choice.retention?.let { RetentionStore(layout, it) }
        pages = if (retention == null) PagedKvStore(layout, policy).also { it.rollbackSlack = maxDraft } else null
        wanted = setOf("logits") + layout.outputs + if (retention?.wantsRetention == true) setOf(RETENTION) else emptySet()
    }

    /** Retention: positions stay absolute and the budget bounds what is held; paging: with a window likewise. */
    override val contextLength: Int get() = if (retention != null || policy.window > 0) Int.MAX_VALUE else modelContext

    override val cacheLength: Int get() = retention?.length ?: pages!!.length

    /** Resident KV bytes: the retention store's (compressed tokens at their packed size) or the resident pages. */
    fun residentKvBytes(): Long = retention?.nbytes() ?: pages!!.residentBytes()

    /** Tokens the retention store evicted since the chat started (0 with paging). */
    val evictedTokens: Int get() = retention?.evicted ?: 0

    override fun reset() {
        retention?.reset()
        pages?.reset()
    }

    override fun step(ids: IntArray, positions: IntArray): FloatArray = calls(ids, positions, allRows = false).last()

    override fun verify(ids: IntArray, positions: IntArray): Array<FloatArray> = calls(ids, positions, allRows = true)

    override fun truncate(length: Int) {
        retention?.truncate(length) ?: pages!!.truncate(length)
    }

    /** The tokens in calls of at most one chunk; each call's last row, or every row with `allRows`. */
    private fun calls(ids: IntArray, positions: IntArray, allRows: Boolean): Array<FloatArray> {
        val chunk = when {
            retention != null -> RetentionStore.CHUNK // the policy acts between calls
            policy.window > 0 -> policy.pageLen
            else -> ids.size
        }
        val rows = ArrayList<FloatArray>()
        var start = 0
        while (start < ids.size) {
            val end = minOf(ids.size, start + chunk)
            val got = run(ids.copyOfRange(start, end), positions.copyOfRange(start, end), allRows)
            if (!allRows) rows.clear()
            rows.addAll(got)
            start = end
        }
        return rows.toTypedArray()
    }

    private fun run(ids: IntArray, positions: IntArray, allRows: Boolean): List<FloatArray> {
        val t = ids.size.toLong()
        val tensors = ArrayList<OnnxTensor>()
        try {
            val inputs = HashMap<String, OnnxTensor>()
            inputs["input_ids"] = longTensor(ids, t).also(tensors::add)
            inputs["position_ids"] = longTensor(positions, t).also(tensors::add) // absolute: RoPE never shifts
            val feeds = retention?.feeds() ?: pages!!.feeds()
            for ((name, kv) in feeds) inputs[name] = kvTensor(kv).also(tensors::add)
            session.run(inputs, wanted).use { result ->
                val logitsTensor = result.get("logits").get() as OnnxTensor
                val all = logitsTensor.floatBuffer
                val first = if (allRows) 0 else ids.size - 1 // only verify calls need every row's logits
                val rows = (first until ids.size).map { row ->
                    FloatArray(vocab).also {
                        all.position(row * vocab)
                        all.get(it)
                    }
                }
                val presents = HashMap<String, KvTensor>()
                for (out in layout.outputs) {
                    val tensor = result.get(out).get() as OnnxTensor
                    val bytes = tensor.byteBuffer.order(ByteOrder.nativeOrder())
                    val data = ByteArray(bytes.remaining()).also { bytes.get(it) }
                    val past = presentToPast.getValue(out)
                    presents[past] = KvTensor(past, layout.dtypes[layout.inputs.indexOf(past)], tensor.info.shape, data)
                }
                if (retention != null) { // the new tokens' retention logits go to the store before it takes their rows
                    val signal = if (retention.wantsRetention) (result.get(RETENTION).get() as OnnxTensor).floatBuffer else null
                    retention.observe(signal?.let { FloatArray(it.remaining()).also { values -> it.get(values) } })
                    retention.update(presents, ids.size)
                } else {
                    pages!!.update(presents, ids.size)
                }
                return rows
            }
        } finally {
            tensors.forEach(OnnxTensor::close)
        }
    }

    private fun longTensor(values: IntArray, t: Long): OnnxTensor =
        OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(values.size) { values[it].toLong() }), longArrayOf(1, t))

    private fun kvTensor(kv: KvTensor): OnnxTensor {
        val type = when (kv.dtype) {
            "float32" -> OnnxJavaType.FLOAT
            "float16" -> OnnxJavaType.FLOAT16
            "uint8" -> OnnxJavaType.UINT8
            else -> error("unsupported KV dtype ${kv.dtype}")
        }
        val buffer = ByteBuffer.allocateDirect(kv.data.size).order(ByteOrder.nativeOrder()).put(kv.data)
        buffer.rewind()
        return OnnxTensor.createTensor(env, buffer, kv.shape, type)
    }

    override fun close() {
        session.close()
    }

    companion object {
        private const val RETENTION = "retention"

        /** Drafts per verify call of the n-gram drafter (Conversation's maxDraft; Python's --speculative 8). */
        const val DEFAULT_MAX_DRAFT = 8
    }
}
