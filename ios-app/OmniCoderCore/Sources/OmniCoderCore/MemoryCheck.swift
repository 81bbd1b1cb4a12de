import Foundation

/// Whether a bundle fits the memory the app has, checked before loading it (the figures of
/// runtimes/mobile_budget_check.py): weights (the graph file and its external data / packages), the runtime
/// overhead (64 MiB + a quarter of the weights) and the KV cache for `contextTokens` at `kvBytesPerToken`.
public struct MemoryCheck: Sendable {
    public static let mib = 1 << 20
    public static let baseOverhead = 64 * mib

    public let weightsBytes: Int
    public let kvBytesPerToken: Int
    public let contextTokens: Int
    public let availableBytes: Int

    public init(weightsBytes: Int, kvBytesPerToken: Int, contextTokens: Int, availableBytes: Int) {
        self.weightsBytes = weightsBytes
        self.kvBytesPerToken = kvBytesPerToken
        self.contextTokens = contextTokens
        self.availableBytes = availableBytes
    }

    public static func overhead(of weights: Int) -> Int { baseOverhead + weights / 4 }

    public var overheadBytes: Int { MemoryCheck.overhead(of: weightsBytes) }
    public var kvBytes: Int { kvBytesPerToken * contextTokens }
    public var totalBytes: Int { weightsBytes + overheadBytes + kvBytes }
    /// The whole need fits.
    public var fits: Bool { totalBytes <= availableBytes }

    /// The longest context whose KV fits beside the weights and the overhead (0: not even the weights fit).
    public var maxContext: Int {
        let room = availableBytes - weightsBytes - overheadBytes
        return room <= 0 || kvBytesPerToken <= 0 ? 0 : room / kvBytesPerToken
    }

    /// The weights and overhead fit with room for at least `minTokens` of KV (the app can page the rest).
    public func loadable(minTokens: Int = 256) -> Bool { maxContext >= minTokens }

    /// One line for the screen.
    public func summary() -> String {
        func mb(_ bytes: Int) -> String { String(format: "%.0f", Double(bytes) / Double(MemoryCheck.mib)) }
        let head = "weights \(mb(weightsBytes)) + overhead \(mb(overheadBytes)) + KV \(mb(kvBytes)) (\(contextTokens) tokens) "
            + "= \(mb(totalBytes)) MB of \(mb(availableBytes)) MB available"
        if fits { return head + ": fits" }
        if maxContext == 0 { return head + ": the weights do not fit; export smaller weights (--weights int4) or free memory" }
        return head + ": over; KV fits for \(maxContext) tokens"
    }

    /// Bytes of the graph file and its external data / package files, as Python's weights_bytes counts them.
    public static func weightsBytes(_ manifest: Manifest, extraGraphFiles: [String] = []) -> Int {
        let graphs = [manifest.graphFile] + extraGraphFiles
        return manifest.files.filter { name, _ in
            graphs.contains { name == $0 || name.hasPrefix($0 + ".") || name.hasPrefix($0 + "/") }
        }.reduce(0) { $0 + $1.value.bytes }
    }
}

/// What the app does when the system reports memory pressure (iOS memory warnings, Android onTrimMemory).
public enum PressureAction: Sendable {
    /// Nothing to do.
    case none
    /// Stop generating and drop the KV cache (a new chat); the weights stay loaded.
    case dropKV
    /// Stop, drop the KV cache and release the model; it is loaded again when the chat is shown.
    case releaseModel

    /// iOS memory warning: drop the KV cache in the foreground, release the model in the background.
    public static func forMemoryWarning(inBackground: Bool) -> PressureAction { inBackground ? .releaseModel : .dropKV }
}
