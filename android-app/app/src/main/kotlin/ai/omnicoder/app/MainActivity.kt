package ai.omnicoder.app

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.enableEdgeToEdge
import androidx.activity.viewModels
import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.lazy.rememberLazyListState
import androidx.compose.foundation.shape.RoundedCornerShape
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle

class MainActivity : ComponentActivity() {
    private val model: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        enableEdgeToEdge() // targetSdk 35 draws edge to edge on Android 15 anyway: the screen pads for the insets
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { ChatScreen(model) }
            }
        }
    }
}

@Composable
fun ChatScreen(model: ChatViewModel) {
    val state by model.state.collectAsStateWithLifecycle()
    var input by remember { mutableStateOf("") }
    val list = rememberLazyListState()
    LaunchedEffect(state.messages.size, state.messages.lastOrNull()?.text?.length) {
        if (state.messages.isNotEmpty()) list.scrollToItem(state.messages.size - 1)
    }
    // safeDrawing = status and navigation bars, display cutout and the keyboard (IME)
    Column(Modifier.fillMaxSize().safeDrawingPadding().padding(12.dp)) {
        Text(state.status, style = MaterialTheme.typography.titleMedium)
        Text(state.stats, style = MaterialTheme.typography.bodySmall)
        Text(state.memory, style = MaterialTheme.typography.bodySmall)
        state.error?.let { Text(it, color = Color(0xFFB00020)) }
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
