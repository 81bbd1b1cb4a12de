package ai.omnicoder.app

import ai.omnicoder.core.SamplingParams
import android.content.Context

/** What the settings screen edits; kept in SharedPreferences. */
data class AppSettings(
    val temperature: Double = 0.7,
    val topK: Int = 40,
    val topP: Double = 0.95,
    val maxTokens: Int = 256,
    val systemPrompt: String = "",
    val bundle: String = BundleInstaller.DEFAULT_NAME,
) {
    /** Checked like the core's sampler does (temperature >= 0, top-k >= 0, top-p in (0, 1]); max tokens >= 1. */
    fun validated(): AppSettings {
        SamplingParams(temperature, topK, topP).validate()
        require(maxTokens >= 1) { "max tokens must be at least 1" }
        return this
    }

    fun sampling(seed: Long = System.nanoTime()): SamplingParams = SamplingParams(temperature, topK, topP, seed)

    companion object {
        private const val PREFS = "omnicoder-settings"

        fun load(context: Context): AppSettings {
            val p = context.getSharedPreferences(PREFS, Context.MODE_PRIVATE)
            val d = AppSettings()
            return runCatching {
                AppSettings(
                    p.getFloat("temperature", d.temperature.toFloat()).toDouble(),
                    p.getInt("top_k", d.topK),
                    p.getFloat("top_p", d.topP.toFloat()).toDouble(),
                    p.getInt("max_tokens", d.maxTokens),
                    p.getString("system_prompt", d.systemPrompt) ?: "",
                    p.getString("bundle", d.bundle) ?: d.bundle,
                ).validated()
            }.getOrDefault(d)
        }

        fun save(context: Context, s: AppSettings) {
            context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).edit()
                .putFloat("temperature", s.temperature.toFloat()).putInt("top_k", s.topK)
                .putFloat("top_p", s.topP.toFloat()).putInt("max_tokens", s.maxTokens)
                .putString("system_prompt", s.systemPrompt).putString("bundle", s.bundle).apply()
        }
    }
}
