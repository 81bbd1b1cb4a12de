package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.KvTensor
import ai.omnicoder.core.ModelSession
import ai.omnicoder.core.PagedKvStore
import ai.omnicoder.core.PagingPolicy
import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.LongBuffer

/**
 * The bundle's decode-step graph in ONNX Runtime (the Android API), behind the core's ModelSession.
 * KV I/O as in runtimes/onnx_session.py: `past_key_values.{i}.key[suffix]` in, `present.{i}.key[suffix]` out;
 * the KV rows live in the core's PagedKvStore, so only the attended pages are fed each step.
 */
class OrtModelSession(bundle: Bundle, private val policy: PagingPolicy, threads: Int = 4) : ModelSession, AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    private val layout = bundle.kvLayout()
    val store = PagedKvStore(layout, policy)
    private val presentToPast = layout.outputs.zip(layout.inputs).toMap()
    private val wanted = setOf("logits") + layout.outputs
    private val modelContext = bundle.manifest.model.contextLength
    private val vocab = bundle.manifest.model.vocabSize

    init {
        bundle.requireTarget("onnx")
        val options = OrtSession.SessionOptions().apply {
            setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
            setIntraOpNumThreads(threads)
            setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
        }
        session = env.createSession(bundle.file(bundle.manifest.graphFile).path, options)
    }

    /** With a window, generation may run past the model's context (positions stay absolute). */
    override val contextLength: Int get() = if (policy.window > 0) Int.MAX_VALUE else modelContext

    override val cacheLength: Int get() = store.length

    override fun reset() = store.reset()

    override fun step(ids: IntArray, positions: IntArray): FloatArray {
        val chunk = if (policy.window > 0) policy.pageLen else ids.size
        var logits = FloatArray(0)
        var start = 0
        while (start < ids.size) {
            val end = minOf(ids.size, start + chunk)
            logits = run(ids.copyOfRange(start, end), positions.copyOfRange(start, end))
            start = end
        }
        return logits
    }

    private fun run(ids: IntArray, positions: IntArray): FloatArray {
        val t = ids.size.toLong()
        val tensors = ArrayList<OnnxTensor>()
        try {
            val inputs = HashMap<String, OnnxTensor>()
            inputs["input_ids"] = longTensor(ids, t).also(tensors::add)
            inputs["position_ids"] = longTensor(positions, t).also(tensors::add)
            for ((name, kv) in store.feeds()) inputs[name] = kvTensor(kv).also(tensors::add)
            session.run(inputs, wanted).use { result ->
                val logitsTensor = result.get("logits").get() as OnnxTensor
                val all = logitsTensor.floatBuffer
                val last = FloatArray(vocab)
                all.position(((t - 1) * vocab).toInt())
                all.get(last)
                val presents = HashMap<String, KvTensor>()
                for (out in layout.outputs) {
                    val tensor = result.get(out).get() as OnnxTensor
                    val bytes = tensor.byteBuffer.order(ByteOrder.nativeOrder())
                    val data = ByteArray(bytes.remaining()).also { bytes.get(it) }
                    val past = presentToPast.getValue(out)
                    presents[past] = KvTensor(past, "", tensor.info.shape, data)
                }
                store.update(presents, ids.size)
                return last
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
}
