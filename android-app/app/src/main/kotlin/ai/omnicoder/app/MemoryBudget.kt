package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.PageBudget
import ai.omnicoder.core.PagingPlan
import ai.omnicoder.core.PagingPolicy
import android.app.ActivityManager
import android.content.Context
import java.io.File

/**
 * The device's memory as the app can use it, and the KV window sized from it (runtimes/kv_budget.py).
 *
 * Two figures matter. The weights and ONNX Runtime's buffers are native memory: what the system can still give
 * before its low-memory killer acts is `availMem - threshold` (not the Java heap's memoryClass / largeMemoryClass,
 * which bound only the Dalvik heap). The KV rows the core keeps are ByteArrays on the Java heap: they are bounded by
 * `Runtime.maxMemory()` minus what the heap already holds (largeHeap is set in the manifest).
 */
object MemoryBudget {
    /** Share of the available memory the KV cache may take. */
    private const val KV_SHARE = 0.25

    /** Native memory the system can still give this app before it starts killing processes. */
    fun availableBytes(context: Context): Long {
        val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        val info = ActivityManager.MemoryInfo().also(am::getMemoryInfo)
        return (info.availMem - info.threshold).coerceAtLeast(0)
    }

    /** Room left on the Java heap, where the core's KV pages and retention rows live. */
    fun heapFreeBytes(): Long {
        val rt = Runtime.getRuntime()
        return rt.maxMemory() - (rt.totalMemory() - rt.freeMemory())
    }

    fun kvBudgetBytes(context: Context): Long =
        minOf((availableBytes(context) * KV_SHARE).toLong(), heapFreeBytes() / 2)

    /** The paging policy for this device: the whole context when it fits the budget, else sinks + a window. */
    fun policy(context: Context, bundle: Bundle, wantedContext: Int): Pair<PagingPolicy, PagingPlan?> {
        val sidecar = bundle.sidecar("kv_paging") ?: return PagingPolicy(64) to null
        val budget = PageBudget.fromSidecar(sidecar)
        val plan = PagingPlan.plan(budget, wantedContext, kvBudgetBytes(context), bundle.manifest.model.contextLength)
            ?: return PagingPolicy(budget.pageLen) to null
        return plan.policy(budget.pageLen) to plan
    }

    /** Resident set size of this process in bytes (VmRSS: native + Java heap + mapped weights in RAM), or -1. */
    fun rssBytes(): Long {
        val line = runCatching { File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") } }.getOrNull()
        val kb = line?.split(Regex("\\s+"))?.getOrNull(1)?.toLongOrNull() ?: return -1
        return kb * 1024
    }

    fun rssMb(): Double = rssBytes() / 1048576.0
}
