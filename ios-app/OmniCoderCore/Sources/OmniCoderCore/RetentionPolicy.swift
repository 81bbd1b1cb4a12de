import Foundation

/// A retention policy or sidecar the app cannot use, or a budget that cannot hold the protected tokens.
public struct RetentionError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

/// How the retention store keeps its KV under a budget (runtimes/kv_retention.py RetentionPolicy): `learned` ranks
/// tokens by the model's retention head (compressing before evicting), `streaming` keeps sinks + the recent window.
/// `h2o` is left out: it ranks by attention from the graph's `query_{i}` outputs, which the apps do not read.
public struct RetentionPolicy: Equatable, Sendable {
    public static let policies = ["learned", "streaming"]

    public var budgetBytes: Int
    public var policy: String
    public var sinkTokens: Int
    public var recentWindow: Int  // 0: recentFraction of the tokens the budget holds in full precision
    public var compressGroup: Int
    public var compress: String  // nf4 | u8 | none (evict instead)
    public var recentFraction: Double

    public init(
        budgetBytes: Int, policy: String = "learned", sinkTokens: Int = 4, recentWindow: Int = 0, compressGroup: Int = 16,
        compress: String = "nf4", recentFraction: Double = 0.75
    ) {
        self.budgetBytes = budgetBytes
        self.policy = policy
        self.sinkTokens = sinkTokens
        self.recentWindow = recentWindow
        self.compressGroup = compressGroup
        self.compress = compress
        self.recentFraction = recentFraction
    }

    /// This policy, or a RetentionError with Python's messages (and the app's: no h2o, group >= 1).
    @discardableResult
    public func validate() throws -> RetentionPolicy {
        guard RetentionPolicy.policies.contains(policy) else {
            throw RetentionError(
                "retention policy \(policy) is unknown; the app offers \(RetentionPolicy.policies.joined(separator: " and ")) "
                    + "(h2o needs the graph's query outputs, which the app does not read)")
        }
        guard budgetBytes > 0, sinkTokens >= 0, recentWindow >= 0 else {
            throw RetentionError("retention needs a KV budget > 0, sink tokens >= 0 and a recent window >= 0")
        }
        guard ["nf4", "u8", "none"].contains(compress) else {
            throw RetentionError("retention compress \(compress) is unknown; use nf4, u8 or none")
        }
        guard compressGroup >= 1 else { throw RetentionError("retention compress group must be >= 1, got \(compressGroup)") }
        return self
    }

    /// The policy from a bundle's `model.retention.json`, built like runtimes/runner_cli.py retention_policy: sinks,
    /// compress dtype and group and recent_fraction (default 0.75) from the sidecar; the budget is the sidecar's
    /// `budget_bytes` unless the app passes its own. The sidecar's `recent_window` (the window at the default budget)
    /// is not used: the window is recent_fraction of what the budget holds.
    public static func fromSidecar(_ sidecar: [String: Any], policy: String = "learned", budgetBytes: Int? = nil) throws
        -> RetentionPolicy
    {
        func bad(_ what: String) -> RetentionError { RetentionError("model.retention.json: \(what); re-export the bundle") }
        func integer(_ object: [String: Any], _ key: String) throws -> Int {
            guard let value = object[key] as? Int else { throw bad("\(key) must be an integer") }
            return value
        }
        guard sidecar["output"] as? String == "retention" else { throw bad("output must be \"retention\"") }
        guard sidecar["class_rule"] as? String == "argmax" else { throw bad("class_rule must be \"argmax\"") }
        guard sidecar["classes"] as? [String] == ["keep", "compress", "drop"] else {
            throw bad("classes must be [keep, compress, drop]")
        }
        guard sidecar["score"] as? String == "logit(keep) - logit(drop)" else {
            throw bad("score must be \"logit(keep) - logit(drop)\"")
        }
        guard let compress = sidecar["compress"] as? [String: Any] else { throw bad("compress must be an object") }
        guard let dtype = compress["dtype"] as? String else { throw bad("compress.dtype must be a string") }
        let fraction = sidecar["recent_fraction"] == nil ? 0.75 : sidecar["recent_fraction"] as? Double
        guard let fraction, fraction > 0, fraction <= 1 else { throw bad("recent_fraction must be a number in (0, 1]") }
        if let budgetBytes, budgetBytes <= 0 { throw RetentionError("the app's KV budget must be > 0, got \(budgetBytes)") }
        let sinks = try integer(sidecar, "sink_tokens")
        let group = try integer(compress, "group")
        return try RetentionPolicy(
            budgetBytes: try budgetBytes ?? integer(sidecar, "budget_bytes"), policy: policy, sinkTokens: sinks,
            compressGroup: group, compress: dtype, recentFraction: fraction
        ).validate()
    }
}

/// The KV store a session uses: the retention store (with its policy) or pages; `note` says which and why.
public struct KvChoice: Equatable, Sendable {
    public let retention: RetentionPolicy?
    public let note: String

    /// Retention when the bundle has a retention sidecar, the graph outputs `retention` and the KV is fp32 (learned
    /// policy; the budget is the sidecar's, or the device's when that is smaller), else paging as before. The two are
    /// exclusive, as in the Python runner.
    public static func choose(sidecar: [String: Any]?, hasRetentionOutput: Bool, kvDtype: String, deviceBudgetBytes: Int) throws
        -> KvChoice
    {
        guard let sidecar else { return KvChoice(retention: nil, note: "") }
        guard hasRetentionOutput else {
            return KvChoice(retention: nil, note: "retention sidecar ignored: the graph has no retention output")
        }
        guard kvDtype == "fp32" else {
            return KvChoice(retention: nil, note: "retention sidecar ignored: it needs fp32 KV, the bundle's is \(kvDtype)")
        }
        let own = try RetentionPolicy.fromSidecar(sidecar)
        if deviceBudgetBytes <= 0 || deviceBudgetBytes >= own.budgetBytes {
            let mb = Double(own.budgetBytes) / 1_048_576
            return KvChoice(retention: own, note: String(format: "KV: learned retention, %.2f MB budget (the sidecar's)", mb))
        }
        let policy = try RetentionPolicy.fromSidecar(sidecar, budgetBytes: deviceBudgetBytes)
        let mb = Double(deviceBudgetBytes) / 1_048_576
        return KvChoice(retention: policy, note: String(format: "KV: learned retention, %.2f MB budget (device memory)", mb))
    }
}
