package ai.omnicoder.app

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.enableEdgeToEdge
import androidx.activity.viewModels
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Surface
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle

class MainActivity : ComponentActivity() {
    private val model: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        enableEdgeToEdge() // targetSdk 35 draws edge to edge on Android 15 anyway: the screens pad for the insets
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { AppScreen(model) }
            }
        }
    }

    override fun onStart() {
        super.onStart()
        model.onVisible()
    }

    /** Memory pressure (ComponentCallbacks2): the view model drops the KV cache or releases the model. */
    override fun onTrimMemory(level: Int) {
        super.onTrimMemory(level)
        model.onTrimMemory(level)
    }
}

private val TABS = listOf("Chat", "Models", "Settings", "Benchmark")

@Composable
fun AppScreen(model: ChatViewModel) {
    val state by model.state.collectAsStateWithLifecycle()
    var tab by rememberSaveable { mutableIntStateOf(0) }
    // safeDrawing = status and navigation bars, display cutout and the keyboard (IME)
    Column(Modifier.fillMaxSize().safeDrawingPadding()) {
        TabRow(selectedTabIndex = tab) {
            TABS.forEachIndexed { i, title -> Tab(selected = tab == i, onClick = { tab = i }, text = { Text(title) }) }
        }
        Column(Modifier.fillMaxSize().padding(12.dp)) {
            when (tab) {
                0 -> ChatScreen(model, state)
                1 -> ModelsScreen(model, state)
                2 -> SettingsScreen(model, state)
                else -> BenchmarkScreen(model, state)
            }
        }
    }
}
