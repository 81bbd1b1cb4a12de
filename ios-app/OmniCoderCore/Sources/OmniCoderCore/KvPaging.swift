import Foundation

/// Which pages a step attends to (runtimes/kv_paging.py PagingPolicy, without predicted pages).
public struct PagingPolicy: Equatable, Sendable {
    public let pageLen: Int
    public let window: Int
    public let sinkPages: Int

    public init(pageLen: Int = 64, window: Int = 0, sinkPages: Int = 0) {
        precondition(pageLen > 0 && window >= 0 && sinkPages >= 0, "paging: page-len > 0, window and sinks >= 0")
        self.pageLen = pageLen
        self.window = window
        self.sinkPages = sinkPages
    }
}

/// One KV tensor as bytes in native order, BNSH: shape [1, heads, tokens, width].
public struct KvTensor {
    public let name: String
    public let dtype: String
    public let shape: [Int]
    public var data: [UInt8]

    public init(name: String, dtype: String, shape: [Int], data: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }
}

/// The KV cache in pages of `pageLen` tokens, all layers of a token range per page (runtimes/kv_paging.py
/// PagedKVCache). Each step feeds only the attended pages (sinks + the window); positions stay absolute. Pages
/// that can never be attended again are dropped, so resident memory follows the PagingPlan, not the context. A bundle
/// with a retention sidecar uses `RetentionStore` instead (the two are exclusive, as in the Python runner).
public final class PagedKvStore {
    public final class Page {
        public let start: Int
        public internal(set) var filled = 0
        var data: [String: [UInt8]]?  // per input: [heads, pageLen, width] rows; nil when dropped
        init(start: Int) { self.start = start }
        public var resident: Bool { data != nil }
    }

    public let layout: KvLayout
    public let policy: PagingPolicy
    public private(set) var pages: [Page] = []
    public private(set) var length = 0
    /// Tokens behind the window whose pages are kept for rollbacks (`truncate`): speculative decoding rolls back at
    /// most its draft length, so a session that verifies drafts sets this to it. 0: pages are dropped as soon as the
    /// window leaves them.
    public var rollbackSlack = 0 {
        didSet { precondition(rollbackSlack >= 0, "rollback slack must be >= 0") }
    }

    public init(layout: KvLayout, policy: PagingPolicy) {
        self.layout = layout
        self.policy = policy
    }

    public func reset() {
        pages = []
        length = 0
    }

    public func windowPages() -> [Int] {
        if policy.window <= 0 { return Array(pages.indices) }
        let first = max(0, length - policy.window)
        return pages.indices.filter { pages[$0].start + pages[$0].filled > first }
    }

    public func attendedPages() -> [Int] {
        Set(0..<min(policy.sinkPages, pages.count)).union(windowPages()).sorted()
    }

    /// The attended tokens' rows per KV input, [1, heads, n, width], in cache order.
    public func feeds() -> [String: KvTensor] {
        let attended = attendedPages()
        let tokens = attended.reduce(0) { $0 + pages[$1].filled }
        var out: [String: KvTensor] = [:]
        for (index, name) in layout.inputs.enumerated() {
            let row = layout.rowBytes(index)
            var data = [UInt8]()
            data.reserveCapacity(layout.heads * tokens * row)
            for head in 0..<layout.heads {
                for p in attended {
                    let page = pages[p]
                    guard let src = page.data?[name] else { fatalError("page \(p) was dropped but is attended") }
                    let from = head * policy.pageLen * row
                    data.append(contentsOf: src[from..<(from + page.filled * row)])
                }
            }
            out[name] = KvTensor(
                name: name, dtype: layout.dtypes[index], shape: [1, layout.heads, tokens, layout.widths[index]], data: data)
        }
        return out
    }

    /// Append the last `newTokens` rows of each present tensor (keyed by past input name; [1, heads, total, width]).
    public func update(_ presents: [String: KvTensor], newTokens: Int) {
        var done = 0
        while done < newTokens {
            if pages.isEmpty || pages.last!.filled == policy.pageLen {
                let page = Page(start: length)
                var data: [String: [UInt8]] = [:]
                for (i, name) in layout.inputs.enumerated() {
                    data[name] = [UInt8](repeating: 0, count: layout.heads * policy.pageLen * layout.rowBytes(i))
                }
                page.data = data
                pages.append(page)
            }
            let page = pages.last!
            let take = min(policy.pageLen - page.filled, newTokens - done)
            for (index, name) in layout.inputs.enumerated() {
                guard let present = presents[name] else { fatalError("no present tensor for \(name)") }
                let row = layout.rowBytes(index)
                let total = present.shape[2]
                let first = total - newTokens + done
                for head in 0..<layout.heads {
                    let src = (head * total + first) * row
                    let dst = (head * policy.pageLen + page.filled) * row
                    page.data![name]!.replaceSubrange(dst..<(dst + take * row), with: present.data[src..<(src + take * row)])
                }
            }
            page.filled += take
            done += take
            length += take
        }
        dropUnreachable()
    }

    /// Keep the first `length` tokens (speculative decoding's rollback; runtimes/kv_paging.py truncate).
    public func truncate(_ length: Int) {
        precondition(0 <= length && length <= self.length, "cannot truncate a cache of \(self.length) tokens to \(length)")
        while let last = pages.last, last.start >= length { pages.removeLast() }
        if let last = pages.last {
            precondition(last.data != nil, "page \(pages.count - 1) was dropped; raise rollbackSlack to the draft length")
            last.filled = length - last.start
        }
        self.length = length
    }

    /// Resident KV bytes (pages not dropped).
    public func residentBytes() -> Int {
        pages.reduce(0) { $0 + ($1.data?.values.reduce(0) { $0 + $1.count } ?? 0) }
    }

    public func residentPages() -> Int { pages.filter(\.resident).count }

    /// Drop the pages outside the sinks, the window and the rollback slack behind it (never the last page).
    private func dropUnreachable() {
        if policy.window <= 0 { return }
        let first = max(0, length - policy.window - rollbackSlack)
        for (i, page) in pages.enumerated()
        where i >= policy.sinkPages && page.start + page.filled <= first && i != pages.count - 1 {
            page.data = nil
        }
    }
}
