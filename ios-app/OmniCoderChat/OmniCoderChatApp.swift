import SwiftUI

@main
struct OmniCoderChatApp: App {
    var body: some Scene {
        WindowGroup { ChatView() }
    }
}
