package ai.omnicoder.app

import ai.omnicoder.core.Benchmark
import ai.omnicoder.core.Bundle
import ai.omnicoder.core.ChatPrompter
import ai.omnicoder.core.Conversation
import ai.omnicoder.core.MemoryCheck
import ai.omnicoder.core.PressureAction
import ai.omnicoder.core.Sampler
import android.app.Application
import android.net.Uri
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import java.util.concurrent.atomic.AtomicBoolean

data class Message(val fromUser: Boolean, val text: String)

data class ChatState(
    val status: String = "loading",
    val ready: Boolean = false,
    val generating: Boolean = false,
    val messages: List<Message> = emptyList(),
    val stats: String = "",
    val memory: String = "",
    val memoryCheck: String = "",
    val error: String? = null,
    val settings: AppSettings = AppSettings(),
    val bundles: List<String> = emptyList(),
    val benchmark: String = "",
)

/**
 * Loads the chosen bundle (after checking that weights + KV fit), holds the conversation (KV cache reused across
 * turns, turns formatted by the bundle's chat format), streams tokens to the screen, runs the benchmark and reacts
 * to memory pressure.
 */
class ChatViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(ChatState(settings = AppSettings.load(app)))
    val state: StateFlow<ChatState> = _state
    private val stop = AtomicBoolean(false)
    private var session: OrtModelSession? = null
    private var conversation: Conversation? = null
    private var prompter: ChatPrompter? = null
    private var pagingNote = ""

    init {
        reload()
    }

    private fun status(s: String) = _state.update { it.copy(status = s) }

    /** (Re)load the bundle named in the settings, off the main thread. */
    fun reload() {
        if (_state.value.generating) return
        release("loading")
        viewModelScope.launch(Dispatchers.IO) {
            try {
                _state.update { it.copy(bundles = BundleInstaller.list(getApplication())) }
                load(BundleInstaller.open(getApplication(), _state.value.settings.bundle, ::status))
            } catch (e: Exception) {
                _state.update { it.copy(status = "no model", error = e.message ?: e.toString()) }
            }
        }
    }

    private fun load(bundle: Bundle) {
        val app = getApplication<Application>()
        val model = bundle.manifest.model
        // weights + overhead + KV for the model's context must fit what the system can still give; with less, the
        // paging plan below keeps a window, but the weights themselves must fit with room for some KV
        val check = MemoryCheck.of(bundle, model.contextLength, MemoryBudget.availableBytes(app))
        _state.update { it.copy(memoryCheck = check.summary()) }
        if (!check.loadable()) throw IllegalStateException("not loaded: ${check.summary()}")
        val wanted = 4 * model.contextLength // let a window run past the context when memory is short
        val (policy, plan) = MemoryBudget.policy(app, bundle, wanted)
        // retention (the bundle's model.retention.json, capped by the device's KV budget) replaces paging when present
        val s = OrtModelSession(bundle, policy, bundle.sidecar("retention"), MemoryBudget.kvBudgetBytes(app))
        val paging = when {
            plan == null -> "KV: contiguous"
            plan.fitsWhole -> "KV: whole context in RAM"
            else -> "KV: window ${policy.window} + ${policy.sinkPages} sink page(s) of ${policy.pageLen}"
        }
        pagingNote = when {
            s.retention != null -> s.kvNote
            s.kvNote.isNotEmpty() -> "$paging (${s.kvNote})"
            else -> paging
        }
        session = s
        val p = bundle.prompter() // the bundle's chat format (role pieces rendered at export), plain text without one
        prompter = p
        conversation = newConversation(s, p)
        val chat = if (p.format != null) "chat format" else "plain text (no chat format in the bundle)"
        _state.update { it.copy(status = "${model.name} ready ($chat)", ready = true, error = null, memory = memoryLine()) }
    }

    /** At temperature 0 the conversation verifies n-gram drafts (same tokens as plain greedy, fewer model calls). */
    private fun newConversation(s: OrtModelSession, p: ChatPrompter) = Conversation(
        s, Sampler(_state.value.settings.sampling()), p.tokenizer.stopIds, p.feedsStopToken,
        maxDraft = OrtModelSession.DEFAULT_MAX_DRAFT,
    )

    private fun memoryLine(): String {
        val s = session
        val kv = (s?.residentKvBytes() ?: 0) / 1048576.0
        val evicted = if (s?.retention != null) ", ${s.evictedTokens} tokens evicted" else ""
        val avail = MemoryBudget.availableBytes(getApplication()) / 1048576.0
        return "RSS %.0f MB, KV %.2f MB%s, %.0f MB available. %s".format(MemoryBudget.rssMb(), kv, evicted, avail, pagingNote)
    }

    fun send(text: String) {
        val chat = conversation ?: return
        val p = prompter ?: return
        if (_state.value.generating || text.isEmpty()) return
        stop.set(false)
        val firstTurn = !chat.started
        val settings = _state.value.settings
        _state.update {
            it.copy(generating = true, error = null, messages = it.messages + Message(true, text) + Message(false, ""))
        }
        viewModelScope.launch(Dispatchers.Default) {
            val decoder = p.tokenizer.streamDecoder()
            try {
                // first turn: preamble or system message + user turn + generation prompt; later: the rest of the turn
                val ids = p.ids(text, firstTurn, settings.systemPrompt)
                val result = chat.generate(ids, settings.maxTokens, shouldStop = { stop.get() }) { token ->
                    val piece = decoder.push(token)
                    if (piece.isNotEmpty()) appendToReply(piece)
                }
                appendToReply(decoder.flush())
                val st = result.stats
                val line = "TTFT %.0f ms, prefill %.1f tok/s, decode %.1f tok/s, %d tokens (%s)".format(
                    st.prefillSeconds * 1000, st.prefillTokensPerSecond, st.decodeTokensPerSecond, st.generatedTokens,
                    st.stopReason.label,
                ) + if (st.draftTokens > 0) ", n-gram drafts %d/%d accepted, %.2f tokens/call".format(
                    st.acceptedTokens, st.draftTokens, st.tokensPerCall,
                ) else ""
                _state.update { it.copy(generating = false, stats = line, memory = memoryLine()) }
            } catch (e: Exception) {
                _state.update { it.copy(generating = false, error = e.message ?: e.toString()) }
            }
        }
    }

    private fun appendToReply(piece: String) {
        if (piece.isEmpty()) return
        _state.update { s ->
            val last = s.messages.last()
            s.copy(messages = s.messages.dropLast(1) + last.copy(text = last.text + piece), memory = memoryLine())
        }
    }

    fun stopGeneration() = stop.set(true)

    fun newChat() {
        if (_state.value.generating) return
        val s = session ?: return
        val p = prompter ?: return
        conversation?.reset()
        conversation = newConversation(s, p) // picks up changed sampling settings
        _state.update { it.copy(messages = emptyList(), stats = "", error = null, memory = memoryLine()) }
    }

    /** Save settings; a new bundle is loaded, new sampling settings start with the next chat. */
    fun updateSettings(settings: AppSettings) {
        val checked = try {
            settings.validated()
        } catch (e: IllegalArgumentException) {
            _state.update { it.copy(error = e.message) }
            return
        }
        val old = _state.value.settings
        AppSettings.save(getApplication(), checked)
        _state.update { it.copy(settings = checked, error = null) }
        if (checked.bundle != old.bundle) reload() else if (checked.sampling(0) != old.sampling(0)) newChat()
    }

    fun importBundle(tree: Uri) {
        if (_state.value.generating) return
        viewModelScope.launch(Dispatchers.IO) {
            try {
                val name = BundleInstaller.import(getApplication(), tree, ::status)
                _state.update { it.copy(bundles = BundleInstaller.list(getApplication())) }
                updateSettings(_state.value.settings.copy(bundle = name))
            } catch (e: Exception) {
                _state.update { it.copy(status = "import failed", error = e.message ?: e.toString()) }
            }
        }
    }

    /** Fixed benchmark: 3 runs (the first a warm-up) of a ~100-token prompt and 64 generated tokens. */
    fun runBenchmark() {
        val s = session ?: return
        val p = prompter ?: return
        if (_state.value.generating) return
        stop.set(false)
        _state.update { it.copy(generating = true, benchmark = "running...", messages = emptyList(), stats = "") }
        viewModelScope.launch(Dispatchers.Default) {
            try {
                val prompt = p.tokenizer.encode(BENCH_PROMPT, addBos = p.tokenizer.addsBos)
                val result = Benchmark.run(s, prompt, 64, 3, memory = MemoryBudget::rssBytes, shouldStop = { stop.get() })
                conversation = newConversation(s, p) // the benchmark reset the session
                _state.update { it.copy(generating = false, benchmark = "${prompt.size}-token prompt: ${result.summary()}", memory = memoryLine()) }
            } catch (e: Exception) {
                _state.update { it.copy(generating = false, benchmark = "failed: ${e.message}") }
            }
        }
    }

    /** ComponentCallbacks2.onTrimMemory: drop the KV cache, or release the model in the background. */
    fun onTrimMemory(level: Int) {
        when (PressureAction.forTrimLevel(level)) {
            PressureAction.NONE -> return
            PressureAction.DROP_KV -> {
                stop.set(true)
                viewModelScope.launch(Dispatchers.Default) {
                    while (_state.value.generating) kotlinx.coroutines.delay(20)
                    newChat()
                    _state.update { it.copy(error = "memory is low: the conversation was cleared to free its KV cache") }
                }
            }
            PressureAction.RELEASE_MODEL -> {
                stop.set(true)
                viewModelScope.launch(Dispatchers.Default) {
                    while (_state.value.generating) kotlinx.coroutines.delay(20)
                    release("model released to free memory (in the background); it reloads when you return")
                }
            }
        }
    }

    /** Called when the screen is shown again: reload a model released under memory pressure. */
    fun onVisible() {
        if (session == null && !_state.value.ready && _state.value.status.startsWith("model released")) reload()
    }

    private fun release(status: String) {
        session?.close()
        session = null
        conversation = null
        prompter = null
        _state.update { it.copy(ready = false, status = status, messages = emptyList()) }
    }

    override fun onCleared() {
        session?.close()
    }

    private companion object {
        const val BENCH_PROMPT = "Write a Python function that parses a CSV file with a header row, converts the numeric " +
            "columns to floats, skips malformed lines with a warning, and returns a list of dictionaries. Add type " +
            "hints, a docstring and two doctest examples, then explain the edge cases it handles in three sentences."
    }
}
