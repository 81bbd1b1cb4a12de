package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.PageBudget
import ai.omnicoder.core.PagingPlan
import ai.omnicoder.core.PagingPolicy
import android.app.ActivityManager
import android.content.Context
import java.io.File

/** Sizes the KV window from the device's memory with the bundle's paging sidecar (runtimes/kv_budget.py). */
object MemoryBudget {
    /** Share of the currently available RAM the KV cache may take. */
    private const val KV_SHARE = 0.25

    fun kvBudgetBytes(context: Context): Long {
        val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        val info = ActivityManager.MemoryInfo().also(am::getMemoryInfo)
        val perApp = am.largeMemoryClass.toLong() shl 20
        return (minOf(info.availMem, perApp) * KV_SHARE).toLong()
    }

    /** The paging policy for this device: the whole context when it fits the budget, else sinks + a window. */
    fun policy(context: Context, bundle: Bundle, wantedContext: Int): Pair<PagingPolicy, PagingPlan?> {
        val sidecar = bundle.sidecar("kv_paging") ?: return PagingPolicy(64) to null
        val budget = PageBudget.fromSidecar(sidecar)
        val plan = PagingPlan.plan(budget, wantedContext, kvBudgetBytes(context), bundle.manifest.model.contextLength)
            ?: return PagingPolicy(budget.pageLen) to null
        return plan.policy(budget.pageLen) to plan
    }

    /** Resident set size of this process in MiB (VmRSS), or -1. */
    fun rssMb(): Double {
        val line = runCatching { File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") } }.getOrNull()
        val kb = line?.split(Regex("\\s+"))?.getOrNull(1)?.toDoubleOrNull() ?: return -1.0
        return kb / 1024.0
    }
}
