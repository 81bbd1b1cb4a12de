package ai.omnicoder.core

/**
 * Whether a bundle fits the memory the app has, checked before loading it (the figures of
 * runtimes/mobile_budget_check.py): weights (the graph file and its external data / package), the runtime
 * overhead (64 MiB + a quarter of the weights) and the KV cache for `contextTokens` at `kvBytesPerToken`.
 */
class MemoryCheck(
    val weightsBytes: Long,
    val kvBytesPerToken: Long,
    val contextTokens: Int,
    val availableBytes: Long,
) {
    val overheadBytes: Long = overheadOf(weightsBytes)
    val kvBytes: Long = kvBytesPerToken * contextTokens
    val totalBytes: Long = weightsBytes + overheadBytes + kvBytes

    /** The whole need fits. */
    val fits: Boolean get() = totalBytes <= availableBytes

    /** The weights and overhead fit with room for at least `minTokens` of KV (the app can page the rest). */
    fun loadable(minTokens: Int = 256): Boolean = maxContext >= minTokens

    /** The longest context whose KV fits beside the weights and the overhead (0: not even the weights fit). */
    val maxContext: Long
        get() {
            val room = availableBytes - weightsBytes - overheadBytes
            return if (room <= 0 || kvBytesPerToken <= 0) 0 else room / kvBytesPerToken
        }

    /** One line for the screen. */
    fun summary(): String {
        val head = "weights ${mb(weightsBytes)} + overhead ${mb(overheadBytes)} + KV ${mb(kvBytes)} ($contextTokens tokens) " +
            "= ${mb(totalBytes)} MB of ${mb(availableBytes)} MB available"
        return when {
            fits -> "$head: fits"
            maxContext == 0L -> "$head: the weights do not fit; export smaller weights (--weights int4) or free memory"
            else -> "$head: over; KV fits for $maxContext tokens"
        }
    }

    companion object {
        const val MIB = 1L shl 20
        const val BASE_OVERHEAD = 64 * MIB

        fun overheadOf(weights: Long): Long = BASE_OVERHEAD + weights / 4

        /** Bytes of the graph file and its external data (model.onnx.data, a .mlpackage's files), as Python counts. */
        fun weightsBytes(manifest: Manifest, extraGraphFiles: Collection<String> = emptyList()): Long {
            val graphs = listOf(manifest.graphFile) + extraGraphFiles
            return manifest.files.entries.filter { (name, _) ->
                graphs.any { g -> name == g || name.startsWith("$g.") || name.startsWith("$g/") }
            }.sumOf { it.value.bytes }
        }

        fun of(bundle: Bundle, contextTokens: Int, availableBytes: Long): MemoryCheck =
            MemoryCheck(weightsBytes(bundle.manifest), bundle.kvLayout().bytesPerToken(), contextTokens, availableBytes)

        private fun mb(bytes: Long): String = "%.0f".format(bytes / MIB.toDouble())
    }
}

/** What the app does when the system reports memory pressure (Android onTrimMemory, iOS memory warnings). */
enum class PressureAction {
    /** Nothing to do (the app is visible and memory is fine). */
    NONE,

    /** Stop generating and drop the KV cache (a new chat); the weights stay loaded. */
    DROP_KV,

    /** Stop, drop the KV cache and release the model; it is loaded again when the chat is shown. */
    RELEASE_MODEL,
    ;

    companion object {
        // android.content.ComponentCallbacks2 levels (constants copied: the core has no Android dependency)
        const val TRIM_MEMORY_RUNNING_MODERATE = 5
        const val TRIM_MEMORY_RUNNING_LOW = 10
        const val TRIM_MEMORY_RUNNING_CRITICAL = 15
        const val TRIM_MEMORY_UI_HIDDEN = 20
        const val TRIM_MEMORY_BACKGROUND = 40

        /**
         * Android's onTrimMemory level: running low or critical while visible drops the KV cache (generation cannot
         * go on without it); in the background (level >= BACKGROUND) the model goes too, since a process holding
         * hundreds of MB is the first the system kills. UI_HIDDEN alone keeps everything (the user may come back).
         */
        fun forTrimLevel(level: Int): PressureAction = when {
            level >= TRIM_MEMORY_BACKGROUND -> RELEASE_MODEL
            level == TRIM_MEMORY_UI_HIDDEN -> NONE
            level >= TRIM_MEMORY_RUNNING_LOW -> DROP_KV
            else -> NONE
        }

        /** iOS memory warning: drop the KV cache while in the foreground, release the model in the background. */
        fun forMemoryWarning(inBackground: Boolean): PressureAction = if (inBackground) RELEASE_MODEL else DROP_KV
    }
}
