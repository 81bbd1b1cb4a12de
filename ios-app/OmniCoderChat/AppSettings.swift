import Foundation
import OmniCoderCore

/// What the settings screen edits; kept in UserDefaults.
struct AppSettings: Equatable {
    var temperature = 0.7
    var topK = 40
    var topP = 0.95
    var maxTokens = 256
    var systemPrompt = ""
    var bundle = BundleLocator.builtInName

    func sampling(seed: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000)) -> SamplingParams {
        SamplingParams(temperature: temperature, topK: topK, topP: topP, seed: seed)
    }

    /// Checked like the core's sampler does; max tokens >= 1.
    func validate() throws {
        try sampling(seed: 0).validate()
        guard maxTokens >= 1 else { throw BundleError(kind: .invalid, message: "max tokens must be at least 1") }
    }

    static func load() -> AppSettings {
        let d = UserDefaults.standard
        var s = AppSettings()
        if d.object(forKey: "temperature") != nil { s.temperature = d.double(forKey: "temperature") }
        if d.object(forKey: "topK") != nil { s.topK = d.integer(forKey: "topK") }
        if d.object(forKey: "topP") != nil { s.topP = d.double(forKey: "topP") }
        if d.object(forKey: "maxTokens") != nil { s.maxTokens = d.integer(forKey: "maxTokens") }
        s.systemPrompt = d.string(forKey: "systemPrompt") ?? ""
        s.bundle = d.string(forKey: "bundle") ?? s.bundle
        return (try? s.validate()) != nil ? s : AppSettings()
    }

    func save() {
        let d = UserDefaults.standard
        d.set(temperature, forKey: "temperature")
        d.set(topK, forKey: "topK")
        d.set(topP, forKey: "topP")
        d.set(maxTokens, forKey: "maxTokens")
        d.set(systemPrompt, forKey: "systemPrompt")
        d.set(bundle, forKey: "bundle")
    }
}
