package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject

/** Names, widths and dtypes of a bundle's KV tensors from the manifest's graph.kv (runtimes/kv_format.py KVLayout). */
class KvLayout(kv: JSONObject, nLayers: Int) {
    val heads: Int = kv.getInt("heads")
    val keyDim: Int = kv.getInt("key_dim")
    val valueDim: Int = kv.getInt("value_dim")
    val kvDtype: String
    val inputs = ArrayList<String>()
    val outputs = ArrayList<String>()
    val widths = ArrayList<Int>()
    val dtypes = ArrayList<String>()
    val keySlots = ArrayList<List<String>>()

    init {
        val storage = kv.optJSONObject("storage")
        kvDtype = storage?.optString("dtype", "fp32") ?: "fp32"
        val plain = listOf(Component("", "float32", null))
        val keyParts = components(storage?.optJSONArray("key_components")) ?: plain
        val valueParts = components(storage?.optJSONArray("value_components")) ?: plain
        val pastValue = if (kv.isNull("past_value")) null else kv.optString("past_value", "").ifEmpty { null }
        for (layer in 0 until nLayers) {
            val slots = mutableListOf(Slot(kv.getString("past_key"), kv.getString("present_key"), keyDim, keyParts))
            if (pastValue != null) slots.add(Slot(pastValue, kv.getString("present_value"), valueDim, valueParts))
            for (slot in slots) {
                val names = ArrayList<String>()
                for (part in slot.components) {
                    names.add(slot.past.replace("{layer}", layer.toString()) + part.suffix)
                    inputs.add(names.last())
                    outputs.add(slot.present.replace("{layer}", layer.toString()) + part.suffix)
                    widths.add(part.width ?: slot.width)
                    dtypes.add(part.dtype)
                }
                if (slot.past == kv.getString("past_key")) keySlots.add(names)
            }
        }
    }

    /** Bytes of one stored row (one head, one token) of input `index`. */
    fun rowBytes(index: Int): Int = widths[index] * itemSize(dtypes[index])

    /** Stored KV bytes of one token over all layers. */
    fun bytesPerToken(): Long = inputs.indices.sumOf { heads.toLong() * rowBytes(it) }

    private data class Component(val suffix: String, val dtype: String, val width: Int?)

    private data class Slot(val past: String, val present: String, val width: Int, val components: List<Component>)

    private fun components(array: JSONArray?): List<Component>? {
        if (array == null || array.length() == 0) return null
        return (0 until array.length()).map {
            val c = array.getJSONObject(it)
            Component(c.optString("suffix", ""), c.getString("dtype"), if (c.isNull("width")) null else c.getInt("width"))
        }
    }

    companion object {
        fun itemSize(dtype: String): Int = when (dtype) {
            "float32" -> 4
            "float16" -> 2
            "uint8", "int8" -> 1
            else -> throw IllegalArgumentException("unknown KV dtype $dtype")
        }
    }
}
