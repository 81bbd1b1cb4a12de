package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.ChatPrompter
import ai.omnicoder.core.Conversation
import ai.omnicoder.core.Sampler
import ai.omnicoder.core.SamplingParams
import android.app.Application
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
    val error: String? = null,
)

/** Loads the bundle, holds the conversation (KV cache reused across turns) and streams tokens to the screen. */
class ChatViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(ChatState())
    val state: StateFlow<ChatState> = _state
    private val stop = AtomicBoolean(false)
    private var session: OrtModelSession? = null
    private var conversation: Conversation? = null
    private var prompter: ChatPrompter? = null
    private var pagingNote = ""

    var sampling = SamplingParams(temperature = 0.7, topK = 40, topP = 0.95, seed = 0)
    var maxNewTokens = 256
    var systemPrompt = ""

    init {
        viewModelScope.launch(Dispatchers.IO) {
            try {
                val bundle = BundleInstaller.install(app) { s -> _state.update { it.copy(status = s) } }
                load(bundle)
            } catch (e: Exception) {
                _state.update { it.copy(status = "no model", error = e.message ?: e.toString()) }
            }
        }
    }

    private fun load(bundle: Bundle) {
        val wanted = 4 * bundle.manifest.model.contextLength // let a window run past the context when memory is short
        val (policy, plan) = MemoryBudget.policy(getApplication(), bundle, wanted)
        // retention (the bundle's model.retention.json, capped by the device's KV budget) replaces paging when present
        val s = OrtModelSession(bundle, policy, bundle.sidecar("retention"), MemoryBudget.kvBudgetBytes(getApplication()))
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
        conversation = Conversation(s, Sampler(sampling), p.tokenizer.stopIds, p.feedsStopToken)
        _state.update { it.copy(status = "${bundle.manifest.model.name} ready", ready = true, memory = memoryLine()) }
    }

    private fun memoryLine(): String {
        val s = session
        val kv = (s?.residentKvBytes() ?: 0) / 1048576.0
        val evicted = if (s?.retention != null) ", ${s.evictedTokens} tokens evicted" else ""
        return "RSS %.0f MB, KV %.2f MB%s. %s".format(MemoryBudget.rssMb(), kv, evicted, pagingNote)
    }

    fun send(text: String) {
        val chat = conversation ?: return
        val p = prompter ?: return
        if (_state.value.generating || text.isEmpty()) return
        stop.set(false)
        val firstTurn = !chat.started
        _state.update {
            it.copy(generating = true, error = null, messages = it.messages + Message(true, text) + Message(false, ""))
        }
        viewModelScope.launch(Dispatchers.Default) {
            val decoder = p.tokenizer.streamDecoder()
            try {
                // first turn: preamble or system message + user turn + generation prompt; later: the rest of the turn
                val ids = p.ids(text, firstTurn, systemPrompt)
                val result = chat.generate(ids, maxNewTokens, shouldStop = { stop.get() }) { token ->
                    val piece = decoder.push(token)
                    if (piece.isNotEmpty()) appendToReply(piece)
                }
                appendToReply(decoder.flush())
                val st = result.stats
                val line = "prefill %.1f tok/s, decode %.1f tok/s, %d tokens (%s)".format(
                    st.prefillTokensPerSecond, st.decodeTokensPerSecond, st.generatedTokens, st.stopReason.label,
                )
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
        conversation?.reset()
        _state.update { it.copy(messages = emptyList(), stats = "", error = null, memory = memoryLine()) }
    }

    override fun onCleared() {
        session?.close()
    }
}
