package ai.omnicoder.app

import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.ColumnScope
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.lazy.rememberLazyListState
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.shape.RoundedCornerShape
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Slider
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.unit.dp
import kotlin.math.roundToInt

@Composable
private fun Header(state: ChatState) {
    Text(state.status, style = MaterialTheme.typography.titleMedium)
    Text(state.stats, style = MaterialTheme.typography.bodySmall)
    Text(state.memory, style = MaterialTheme.typography.bodySmall)
    state.error?.let { Text(it, color = Color(0xFFB00020)) }
}

@Composable
fun ColumnScope.ChatScreen(model: ChatViewModel, state: ChatState) {
    var input by remember { mutableStateOf("") }
    val list = rememberLazyListState()
    LaunchedEffect(state.messages.size, state.messages.lastOrNull()?.text?.length) {
        if (state.messages.isNotEmpty()) list.scrollToItem(state.messages.size - 1)
    }
    Header(state)
    LazyColumn(Modifier.weight(1f).fillMaxWidth(), state = list, verticalArrangement = Arrangement.spacedBy(8.dp)) {
        items(state.messages) { message -> Bubble(message) }
    }
    Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
        OutlinedTextField(
            value = input,
            onValueChange = { input = it },
            modifier = Modifier.weight(1f),
            placeholder = { Text("def fibonacci(n):") },
            enabled = state.ready,
        )
        if (state.generating) {
            Button(onClick = model::stopGeneration) { Text("Stop") }
        } else {
            Button(onClick = { model.send(input); input = "" }, enabled = state.ready && input.isNotEmpty()) { Text("Send") }
        }
    }
    OutlinedButton(onClick = model::newChat, enabled = state.ready && !state.generating) { Text("New chat") }
}

@Composable
private fun Bubble(message: Message) {
    val color = if (message.fromUser) Color(0xFFDCEBFF) else Color(0xFFF1F1F1)
    Text(
        text = message.text,
        fontFamily = FontFamily.Monospace,
        modifier = Modifier.fillMaxWidth().background(color, RoundedCornerShape(8.dp)).padding(8.dp),
    )
}

/** Installed bundles (pick one to load), importing a bundle folder, and the memory check of the loaded one. */
@Composable
fun ModelsScreen(model: ChatViewModel, state: ChatState) {
    val picker = rememberLauncherForActivityResult(ActivityResultContracts.OpenDocumentTree()) { uri ->
        if (uri != null) model.importBundle(uri)
    }
    Header(state)
    Text("Bundles", style = MaterialTheme.typography.titleSmall)
    for (name in state.bundles) {
        Row(verticalAlignment = Alignment.CenterVertically) {
            RadioButton(
                selected = name == state.settings.bundle,
                onClick = { model.updateSettings(state.settings.copy(bundle = name)) },
                enabled = !state.generating,
            )
            Text(name)
        }
    }
    Button(onClick = { picker.launch(null) }, enabled = !state.generating) { Text("Import a bundle folder") }
    Text("Memory check before loading: ${state.memoryCheck}", style = MaterialTheme.typography.bodySmall)
}

@Composable
fun SettingsScreen(model: ChatViewModel, state: ChatState) {
    var s by remember(state.settings) { mutableStateOf(state.settings) }
    Column(Modifier.verticalScroll(rememberScrollState()), verticalArrangement = Arrangement.spacedBy(6.dp)) {
        Text("Temperature %.2f (0 = greedy)".format(s.temperature))
        Slider(value = s.temperature.toFloat(), onValueChange = { s = s.copy(temperature = (it * 20).roundToInt() / 20.0) }, valueRange = 0f..2f)
        Text("Top-k ${s.topK} (0 = off)")
        Slider(value = s.topK.toFloat(), onValueChange = { s = s.copy(topK = it.roundToInt()) }, valueRange = 0f..100f)
        Text("Top-p %.2f".format(s.topP))
        Slider(value = s.topP.toFloat(), onValueChange = { s = s.copy(topP = ((it * 100).roundToInt() / 100.0).coerceAtLeast(0.01)) }, valueRange = 0.01f..1f)
        Text("Max new tokens ${s.maxTokens}")
        Slider(value = s.maxTokens.toFloat(), onValueChange = { s = s.copy(maxTokens = it.roundToInt().coerceAtLeast(1)) }, valueRange = 16f..2048f)
        OutlinedTextField(
            value = s.systemPrompt,
            onValueChange = { s = s.copy(systemPrompt = it) },
            label = { Text("System prompt (empty: the model's default)") },
            modifier = Modifier.fillMaxWidth(),
        )
        Button(onClick = { model.updateSettings(s) }) { Text("Save (applies to the next chat)") }
        state.error?.let { Text(it, color = Color(0xFFB00020)) }
    }
}

@Composable
fun BenchmarkScreen(model: ChatViewModel, state: ChatState) {
    Header(state)
    Text("3 runs of a fixed ~100-token prompt and 64 greedy tokens; the first run is a warm-up. Clears the chat.")
    Button(onClick = model::runBenchmark, enabled = state.ready && !state.generating) { Text("Run benchmark") }
    Text(state.benchmark, fontFamily = FontFamily.Monospace)
}
