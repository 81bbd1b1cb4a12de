package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** The shared test vectors of tests/vectors/ (written by tests/vectors/generate.py). */
object Vectors {
    val dir: File by lazy {
        val given = System.getProperty("omnicoder.vectors") ?: System.getenv("OMNICODER_VECTORS")
        val candidates = listOfNotNull(given, "../../tests/vectors", "../tests/vectors", "tests/vectors")
        candidates.map(::File).firstOrNull { File(it, "sampling.json").isFile }
            ?: error("tests/vectors not found; pass -Domnicoder.vectors=PATH")
    }

    fun load(name: String): JSONObject = JSONObject(File(dir, name).readText())

    fun ints(array: JSONArray): IntArray = IntArray(array.length()) { array.getInt(it) }

    fun objects(array: JSONArray): List<JSONObject> = (0 until array.length()).map { array.getJSONObject(it) }

    fun utf16(array: JSONArray): String = String(CharArray(array.length()) { array.getInt(it).toChar() })

    /** fp32 rows of value 10 * token + head for tokens [start, start + count), like generate.py's _fake_presents. */
    fun fakePresents(layout: KvLayout, start: Int, count: Int, leading: Int = 0): Map<String, KvTensor> {
        val out = LinkedHashMap<String, KvTensor>()
        for ((i, name) in layout.inputs.withIndex()) {
            val width = layout.widths[i]
            val total = leading + count
            val buffer = ByteBuffer.allocate(layout.heads * total * width * 4).order(ByteOrder.nativeOrder())
            for (head in 0 until layout.heads) {
                for (t in 0 until total) {
                    val value = if (t < leading) -1f else (10 * (start + t - leading) + head).toFloat()
                    repeat(width) { buffer.putFloat(value) }
                }
            }
            out[name] = KvTensor(name, "float32", longArrayOf(1, layout.heads.toLong(), total.toLong(), width.toLong()), buffer.array())
        }
        return out
    }

    /** Token indices held in a feed: head 0, column 0 of each row, divided by 10. */
    fun fedTokens(tensor: KvTensor): List<Int> {
        val width = tensor.shape[3].toInt()
        val buffer = ByteBuffer.wrap(tensor.data).order(ByteOrder.nativeOrder())
        return (0 until tensor.shape[2].toInt()).map { Math.round(buffer.getFloat(it * width * 4) / 10f) }
    }
}

/** The fake model of decode_loop.json: logits from integers only, so every language gets the same floats. */
class FakeSession(override val contextLength: Int, private val vocab: Int) : ModelSession {
    val calls = ArrayList<List<Int>>()
    override var cacheLength = 0
        private set

    override fun reset() {
        cacheLength = 0
    }

    override fun step(ids: IntArray, positions: IntArray): FloatArray {
        calls.add(listOf(ids.size, positions[0]))
        cacheLength += ids.size
        val h = (ids.last().toLong() * 131 + positions.last() * 31L + cacheLength * 7L) % 100003
        return FloatArray(vocab) { v -> (((h + v * 7919L) % 1000) / 100.0).toFloat() }
    }
}
