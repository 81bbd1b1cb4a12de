import SwiftUI
import UniformTypeIdentifiers

/// The app's tabs: the chat, the bundles (pick / import), the settings and the benchmark.
struct ChatView: View {
    @StateObject private var model = ChatModel()

    var body: some View {
        TabView {
            ChatTab(model: model).tabItem { Label("Chat", systemImage: "bubble.left.and.bubble.right") }
            ModelsTab(model: model).tabItem { Label("Models", systemImage: "shippingbox") }
            SettingsTab(model: model).tabItem { Label("Settings", systemImage: "slider.horizontal.3") }
            BenchmarkTab(model: model).tabItem { Label("Benchmark", systemImage: "speedometer") }
        }
        .task { await model.load() }
    }
}

private struct StatusHeader: View {
    @ObservedObject var model: ChatModel

    var body: some View {
        VStack(alignment: .leading, spacing: 4) {
            Text(model.status).font(.headline)
            Text(model.stats).font(.caption)
            Text(model.memory).font(.caption)
            if let error = model.error { Text(error).foregroundColor(.red).font(.caption) }
        }
    }
}

struct ChatTab: View {
    @ObservedObject var model: ChatModel
    @State private var input = ""

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            StatusHeader(model: model)
            ScrollViewReader { proxy in
                ScrollView {
                    LazyVStack(alignment: .leading, spacing: 8) {
                        ForEach(model.messages) { message in
                            Text(message.text)
                                .font(.system(.body, design: .monospaced))
                                .frame(maxWidth: .infinity, alignment: .leading)
                                .padding(8)
                                .background(message.fromUser ? Color.blue.opacity(0.15) : Color.gray.opacity(0.12))
                                .cornerRadius(8)
                                .id(message.id)
                        }
                    }
                }
                .onChange(of: model.messages.last?.text) { _, _ in
                    if let last = model.messages.last { proxy.scrollTo(last.id, anchor: .bottom) }
                }
            }
            HStack {
                TextField("def fibonacci(n):", text: $input, axis: .vertical)
                    .textFieldStyle(.roundedBorder)
                    .disabled(!model.ready)
                if model.generating {
                    Button("Stop") { model.stop() }
                } else {
                    Button("Send") {
                        model.send(input)
                        input = ""
                    }
                    .disabled(!model.ready || input.isEmpty)
                }
            }
            Button("New chat") { model.newChat() }.disabled(!model.ready || model.generating)
        }
        .padding()
    }
}

/// Bundles present (tap to load one), importing a bundle folder from Files, and the memory check.
struct ModelsTab: View {
    @ObservedObject var model: ChatModel
    @State private var importing = false

    var body: some View {
        Form {
            Section("Bundles") {
                ForEach(model.bundles, id: \.self) { name in
                    Button {
                        var s = model.settings
                        s.bundle = name
                        Task { await model.update(s) }
                    } label: {
                        HStack {
                            Text(name)
                            Spacer()
                            if name == model.settings.bundle { Image(systemName: "checkmark") }
                        }
                    }
                    .disabled(model.generating)
                }
                Button("Import a bundle folder from Files") { importing = true }.disabled(model.generating)
            }
            Section("Memory check before loading") { Text(model.memoryCheck).font(.caption) }
            Section("Status") { StatusHeader(model: model) }
        }
        .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { result in
            if case .success(let url) = result { Task { await model.importBundle(url) } }
        }
    }
}

struct SettingsTab: View {
    @ObservedObject var model: ChatModel
    @State private var draft = AppSettings()

    var body: some View {
        Form {
            Section("Sampling") {
                VStack(alignment: .leading) {
                    Text(String(format: "Temperature %.2f (0 = greedy)", draft.temperature))
                    Slider(value: $draft.temperature, in: 0...2, step: 0.05)
                }
                Stepper("Top-k \(draft.topK) (0 = off)", value: $draft.topK, in: 0...200, step: 5)
                VStack(alignment: .leading) {
                    Text(String(format: "Top-p %.2f", draft.topP))
                    Slider(value: $draft.topP, in: 0.05...1, step: 0.01)
                }
                Stepper("Max new tokens \(draft.maxTokens)", value: $draft.maxTokens, in: 16...4096, step: 16)
            }
            Section("System prompt (empty: the model's default)") {
                TextField("You are a helpful coding assistant.", text: $draft.systemPrompt, axis: .vertical)
            }
            Button("Save (applies to the next chat)") { Task { await model.update(draft) } }
            if let error = model.error { Text(error).foregroundColor(.red).font(.caption) }
        }
        .onAppear { draft = model.settings }
    }
}

struct BenchmarkTab: View {
    @ObservedObject var model: ChatModel

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            StatusHeader(model: model)
            Text("3 runs of a fixed ~100-token prompt and 64 greedy tokens; the first run is a warm-up. Clears the chat.")
                .font(.caption)
            Button("Run benchmark") { model.runBenchmark() }.disabled(!model.ready || model.generating)
            Text(model.benchmark).font(.system(.body, design: .monospaced))
            Spacer()
        }
        .padding()
    }
}
