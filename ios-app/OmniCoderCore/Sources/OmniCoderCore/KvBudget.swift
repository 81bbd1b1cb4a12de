import Foundation

/// What a paged KV cache holds per page, from the paging sidecar (runtimes/kv_budget.py PageBudget).
public struct PageBudget: Equatable {
    public let pageLen: Int
    public let nLayers: Int
    public let bytesPerToken: Double
    public let pageBytes: Int

    public func pages(_ context: Int) -> Int { (context + pageLen - 1) / pageLen }
    public func bytesAt(_ context: Int) -> Int { pages(context) * pageBytes }

    private static let elementBytes: [String: Double] = ["fp32": 4, "fp16": 2, "u8": 1, "nf4": 0.5]
    private static let groupOverhead: [String: Int] = ["fp32": 0, "fp16": 0, "u8": 4, "nf4": 2]

    public init(sidecar: [String: Any]) throws {
        let perLayer = try PageBudget.bytesPerTokenPerLayer(sidecar)
        var perToken = 0.0
        for v in perLayer { perToken += v }
        guard let pageLen = sidecar["page_len"] as? Int else {
            throw BundleError(kind: .invalid, message: "the paging sidecar has no page_len; re-export the bundle")
        }
        self.pageLen = pageLen
        nLayers = perLayer.count
        bytesPerToken = perToken
        pageBytes = Int((Double(pageLen) * perToken).rounded(.up))
    }

    /// The sidecar's own `bytes_per_token_per_layer`, else computed from its widths and dtype.
    public static func bytesPerTokenPerLayer(_ s: [String: Any]) throws -> [Double] {
        guard let n = s["n_layers"] as? Int else {
            throw BundleError(kind: .invalid, message: "the paging sidecar has no n_layers; re-export the bundle")
        }
        let dtype = s["kv_dtype"] as? String ?? "fp32"
        if let per = s["bytes_per_token_per_layer"] as? Double { return Array(repeating: per, count: n) }
        let group = (s["kv_group"] as? Int).flatMap { $0 > 0 ? $0 : nil } ?? 32
        func perLayer(_ scalar: String, _ listed: String) -> [Int] {
            (s[listed] as? [Int]) ?? Array(repeating: s[scalar] as? Int ?? 0, count: n)
        }
        let heads = perLayer("heads", "heads_per_layer")
        let dls = perLayer("dl", "dl_per_layer")
        let uniform = s["dl_per_layer"] == nil
        let rope = s["rope_dim"] as? Int ?? 0
        return (0..<n).map { i in
            let key = uniform ? (s["key_dim"] as? Int ?? dls[i] + rope) : dls[i] + rope
            var value = dls[i]
            if let v = s["value_dim"] as? Int { value = v == 0 ? 0 : (uniform ? v : dls[i]) }
            return Double(heads[i] * (rowBytes(key, dtype, group) + rowBytes(value, dtype, group)))
        }
    }

    private static func rowBytes(_ width: Int, _ dtype: String, _ group: Int) -> Int {
        if width <= 0 { return 0 }
        var g = group
        while g > 1 && width % g != 0 { g /= 2 }
        let overhead = groupOverhead[dtype] ?? 0
        let groups = overhead > 0 ? width / g : 0
        return Int((Double(width) * (elementBytes[dtype] ?? 4)).rounded(.up)) + groups * overhead
    }
}

/// Paged settings that fit a RAM budget (runtimes/kv_budget.py PagingPlan).
public struct PagingPlan: Equatable {
    public let context: Int
    public let budgetBytes: Int
    public let fitsWhole: Bool
    public let window: Int
    public let sinkPages: Int
    public let predictedPages: Int
    public let residentPages: Int
    public let residentBytes: Int
    public let totalBytes: Int
    public let spillBytes: Int

    public static let minPagedPages = 3
    public static let maxPredictedPages = 0

    /// The policy of the app's paged cache: no window when the whole context fits.
    public func policy(pageLen: Int) -> PagingPolicy {
        fitsWhole ? PagingPolicy(pageLen: pageLen) : PagingPolicy(pageLen: pageLen, window: window, sinkPages: sinkPages)
    }

    /// The largest window (1 sink page) whose resident KV fits `budgetBytes`; nil when not even 3 pages fit.
    public static func plan(_ layout: PageBudget, context: Int, budgetBytes: Int, modelContext: Int? = nil) -> PagingPlan? {
        let total = layout.bytesAt(context)
        let limit = modelContext ?? context
        if total <= budgetBytes && context <= limit {
            return PagingPlan(
                context: context, budgetBytes: budgetBytes, fitsWhole: true, window: context, sinkPages: 0,
                predictedPages: 0, residentPages: layout.pages(context), residentBytes: total, totalBytes: total,
                spillBytes: 0)
        }
        let budgetPages = min(budgetBytes / layout.pageBytes, layout.pages(context))
        let attendable = limit / layout.pageLen
        if budgetPages < minPagedPages || attendable < minPagedPages { return nil }
        let free = min(budgetPages, attendable) - 2
        let predicted = min(maxPredictedPages, Int((Double(free - 1) / 2).rounded(.down)))
        let windowPages = free - predicted
        let resident = min(budgetPages * layout.pageBytes, total)
        return PagingPlan(
            context: context, budgetBytes: budgetBytes, fitsWhole: false, window: windowPages * layout.pageLen,
            sinkPages: 1, predictedPages: predicted, residentPages: budgetPages, residentBytes: resident,
            totalBytes: total, spillBytes: total - resident)
    }
}
