package ai.omnicoder.core

import org.json.JSONObject
import kotlin.math.ceil

/** What a paged KV cache holds per page, from the paging sidecar (runtimes/kv_budget.py PageBudget). */
data class PageBudget(val pageLen: Int, val nLayers: Int, val bytesPerToken: Double, val pageBytes: Long) {
    fun pages(context: Int): Int = (context + pageLen - 1) / pageLen

    fun bytesAt(context: Int): Long = pages(context) * pageBytes

    companion object {
        private val ELEMENT_BYTES = mapOf("fp32" to 4.0, "fp16" to 2.0, "u8" to 1.0, "nf4" to 0.5)
        private val GROUP_OVERHEAD = mapOf("fp32" to 0, "fp16" to 0, "u8" to 4, "nf4" to 2)

        fun fromSidecar(sidecar: JSONObject): PageBudget {
            val perLayer = bytesPerTokenPerLayer(sidecar)
            var perToken = 0.0
            for (v in perLayer) perToken += v
            val pageLen = sidecar.getInt("page_len")
            return PageBudget(pageLen, perLayer.size, perToken, ceil(pageLen * perToken).toLong())
        }

        /** The sidecar's own `bytes_per_token_per_layer`, else computed from its widths and dtype. */
        fun bytesPerTokenPerLayer(sidecar: JSONObject): List<Double> {
            val nLayers = sidecar.getInt("n_layers")
            val dtype = sidecar.optString("kv_dtype", "fp32")
            if (sidecar.has("bytes_per_token_per_layer")) return List(nLayers) { sidecar.getDouble("bytes_per_token_per_layer") }
            val group = sidecar.optInt("kv_group", 0).takeIf { it > 0 } ?: 32
            val heads = perLayer(sidecar, "heads", "heads_per_layer")
            val dls = perLayer(sidecar, "dl", "dl_per_layer")
            val uniform = !sidecar.has("dl_per_layer")
            val rope = sidecar.optInt("rope_dim", 0)
            return heads.indices.map { i ->
                val key = if (uniform && sidecar.has("key_dim")) sidecar.getInt("key_dim") else dls[i] + rope
                val value = when {
                    sidecar.has("value_dim") && sidecar.getInt("value_dim") == 0 -> 0
                    uniform && sidecar.has("value_dim") -> sidecar.getInt("value_dim")
                    else -> dls[i]
                }
                (heads[i] * (rowBytes(key, dtype, group) + rowBytes(value, dtype, group))).toDouble()
            }
        }

        private fun perLayer(sidecar: JSONObject, scalar: String, listed: String): List<Int> {
            val n = sidecar.getInt("n_layers")
            val array = sidecar.optJSONArray(listed) ?: return List(n) { sidecar.getInt(scalar) }
            require(array.length() == n) { "the paging sidecar's $listed has ${array.length()} entries for $n layers" }
            return List(n) { array.getInt(it) }
        }

        private fun rowBytes(width: Int, dtype: String, group: Int): Int {
            if (width <= 0) return 0
            var g = group
            while (g > 1 && width % g != 0) g /= 2
            val overhead = GROUP_OVERHEAD.getValue(dtype)
            val groups = if (overhead > 0) width / g else 0
            return ceil(width * ELEMENT_BYTES.getValue(dtype)).toInt() + groups * overhead
        }
    }
}

/** Paged settings that fit a RAM budget (runtimes/kv_budget.py PagingPlan). */
data class PagingPlan(
    val context: Int,
    val budgetBytes: Long,
    val fitsWhole: Boolean,
    val window: Int,
    val sinkPages: Int,
    val predictedPages: Int,
    val residentPages: Int,
    val residentBytes: Long,
    val totalBytes: Long,
    val spillBytes: Long,
) {
    /** The policy of the app's paged cache: no window when the whole context fits. */
    fun policy(pageLen: Int): PagingPolicy =
        if (fitsWhole) PagingPolicy(pageLen, 0, 0) else PagingPolicy(pageLen, window, sinkPages)

    companion object {
        const val MIN_PAGED_PAGES = 3
        const val MAX_PREDICTED_PAGES = 0

        /** The largest window (1 sink page) whose resident KV fits `budgetBytes`; null when not even 3 pages fit. */
        fun plan(layout: PageBudget, context: Int, budgetBytes: Long, modelContext: Int? = null): PagingPlan? {
            val total = layout.bytesAt(context)
            val limit = modelContext ?: context
            if (total <= budgetBytes && context <= limit) {
                return PagingPlan(context, budgetBytes, true, context, 0, 0, layout.pages(context), total, total, 0)
            }
            val budgetPages = minOf(budgetBytes / layout.pageBytes, layout.pages(context).toLong()).toInt()
            val attendable = limit / layout.pageLen
            if (budgetPages < MIN_PAGED_PAGES || attendable < MIN_PAGED_PAGES) return null
            val free = minOf(budgetPages, attendable) - 2
            val predicted = minOf(MAX_PREDICTED_PAGES, Math.floorDiv(free - 1, 2))
            val windowPages = free - predicted
            val resident = minOf(budgetPages * layout.pageBytes, total)
            return PagingPlan(
                context, budgetBytes, false, windowPages * layout.pageLen, 1, predicted, budgetPages, resident, total,
                total - resident,
            )
        }
    }
}
