import SwiftUI

struct ChatView: View {
    @StateObject private var model = ChatModel()
    @State private var input = ""

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            Text(model.status).font(.headline)
            Text(model.stats).font(.caption)
            Text(model.memory).font(.caption)
            if let error = model.error { Text(error).foregroundColor(.red).font(.caption) }
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
        .task { await model.load() }
    }
}
