package ai.omnicoder.core

import org.json.JSONArray
import org.json.JSONObject
import java.util.Locale

/** A retention policy or sidecar the app cannot use, or a budget that cannot hold the protected tokens. */
class RetentionException(message: String) : Exception(message)

/**
 * How the retention store keeps its KV under a budget (runtimes/kv_retention.py RetentionPolicy): `learned` ranks
 * tokens by the model's retention head (compressing before evicting), `streaming` keeps sinks + the recent window.
 * `h2o` is left out: it ranks by attention from the graph's `query.{i}` outputs, which the apps do not read.
 */
data class RetentionPolicy(
    val budgetBytes: Long,
    val policy: String = "learned",
    val sinkTokens: Int = 4,
    val recentWindow: Int = 0, // 0: recentFraction of the tokens the budget holds in full precision
    val compressGroup: Int = 16,
    val compress: String = "nf4", // nf4 | u8 | none (evict instead)
    val recentFraction: Double = 0.75,
) {
    /** This policy, or a RetentionException with Python's messages (and the app's: no h2o, group >= 1). */
    fun validate(): RetentionPolicy {
        if (policy !in POLICIES) {
            throw RetentionException(
                "retention policy $policy is unknown; the app offers ${POLICIES.joinToString(" and ")} " +
                    "(h2o needs the graph's query outputs, which the app does not read)",
            )
        }
        if (budgetBytes <= 0 || sinkTokens < 0 || recentWindow < 0) {
            throw RetentionException("retention needs a KV budget > 0, sink tokens >= 0 and a recent window >= 0")
        }
        if (compress !in listOf("nf4", "u8", "none")) {
            throw RetentionException("retention compress $compress is unknown; use nf4, u8 or none")
        }
        if (compressGroup < 1) throw RetentionException("retention compress group must be >= 1, got $compressGroup")
        return this
    }

    companion object {
        val POLICIES = listOf("learned", "streaming")
        private val CLASSES = listOf("keep", "compress", "drop")

        /**
         * The policy from a bundle's `model.retention.json`, built like runtimes/runner_cli.py retention_policy:
         * sinks, compress dtype and group and recent_fraction (default 0.75) from the sidecar; the budget is the
         * sidecar's `budget_bytes` unless the app passes its own. The sidecar's `recent_window` (the window at the
         * default budget) is not used: the window is recent_fraction of what the budget holds.
         */
        fun fromSidecar(sidecar: JSONObject, policy: String = "learned", budgetBytes: Long? = null): RetentionPolicy {
            fun bad(what: String): Nothing = throw RetentionException("model.retention.json: $what; re-export the bundle")
            fun integer(obj: JSONObject, key: String): Long {
                val value = obj.opt(key)
                return if (value is Int || value is Long) (value as Number).toLong() else bad("$key must be an integer")
            }
            if (sidecar.opt("output") != "retention") bad("output must be \"retention\"")
            if (sidecar.opt("class_rule") != "argmax") bad("class_rule must be \"argmax\"")
            val classes = sidecar.optJSONArray("classes") ?: JSONArray()
            if ((0 until classes.length()).map { classes.opt(it) } != CLASSES) bad("classes must be $CLASSES")
            if (sidecar.opt("score") != "logit(keep) - logit(drop)") bad("score must be \"logit(keep) - logit(drop)\"")
            val compress = sidecar.optJSONObject("compress") ?: bad("compress must be an object")
            val dtype = compress.opt("dtype") as? String ?: bad("compress.dtype must be a string")
            val fraction = if (sidecar.has("recent_fraction")) sidecar.opt("recent_fraction") else 0.75
            if (fraction !is Number || !(fraction.toDouble() > 0 && fraction.toDouble() <= 1)) {
                bad("recent_fraction must be a number in (0, 1]")
            }
            if (budgetBytes != null && budgetBytes <= 0) {
                throw RetentionException("the app's KV budget must be > 0, got $budgetBytes")
            }
            val sinks = integer(sidecar, "sink_tokens")
            val group = integer(compress, "group")
            if (sinks > Int.MAX_VALUE || group > Int.MAX_VALUE) bad("sink_tokens and compress.group must fit 32 bits")
            return RetentionPolicy(
                budgetBytes = budgetBytes ?: integer(sidecar, "budget_bytes"),
                policy = policy,
                sinkTokens = sinks.toInt(),
                compressGroup = group.toInt(),
                compress = dtype,
                recentFraction = fraction.toDouble(),
            ).validate()
        }
    }
}

/** The KV store a session uses: the retention store (with its policy) or pages; `note` says which and why. */
data class KvChoice(val retention: RetentionPolicy?, val note: String) {
    companion object {
        /**
         * Retention when the bundle has a retention sidecar, the graph outputs `retention` and the KV is fp32
         * (learned policy; the budget is the sidecar's, or the device's when that is smaller), else paging as before.
         * The two are exclusive, as in the Python runner.
         */
        fun choose(sidecar: JSONObject?, hasRetentionOutput: Boolean, kvDtype: String, deviceBudgetBytes: Long): KvChoice {
            if (sidecar == null) return KvChoice(null, "")
            if (!hasRetentionOutput) return KvChoice(null, "retention sidecar ignored: the graph has no retention output")
            if (kvDtype != "fp32") {
                return KvChoice(null, "retention sidecar ignored: it needs fp32 KV, the bundle's is $kvDtype")
            }
            val own = RetentionPolicy.fromSidecar(sidecar)
            if (deviceBudgetBytes <= 0 || deviceBudgetBytes >= own.budgetBytes) {
                return KvChoice(own, note(own.budgetBytes, "the sidecar's"))
            }
            val policy = RetentionPolicy.fromSidecar(sidecar, budgetBytes = deviceBudgetBytes)
            return KvChoice(policy, note(deviceBudgetBytes, "device memory"))
        }

        private fun note(budget: Long, source: String): String =
            String.format(Locale.ROOT, "KV: learned retention, %.2f MB budget (%s)", budget / 1048576.0, source)
    }
}
