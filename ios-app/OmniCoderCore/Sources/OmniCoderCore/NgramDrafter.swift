import Foundation

/// Prompt-lookup drafting with an adaptive draft length: runtimes/drafters.py NgramDrafter, proposal for proposal.
///
/// The history's last n tokens (n from `maxNgram` down to `minNgram`) are looked up among earlier n-grams of the
/// history (the most recent occurrence wins) and the tokens that followed are proposed, `length` of them. The length
/// doubles after a fully accepted draft (up to `maxDraft`), becomes accepted + 1 after a partial one and halves after
/// a rejected first guess; after `patience` calls in a row with nothing accepted the drafter stays silent for a pause
/// that doubles each time (up to 64 calls). Costs no model call.
public final class NgramDrafter {
    public let maxDraft: Int
    public let maxNgram: Int
    public let minNgram: Int
    public let patience: Int
    /// Tokens the next proposal may have (before `room` caps it).
    public private(set) var length = 1
    public private(set) var misses = 0
    public private(set) var pause = 1
    public private(set) var silent = 0
    /// n-grams ending before this history position are in the index.
    public private(set) var indexed = 0
    private var index: [Int: [[Int]: Int]] = [:]

    public init(maxDraft: Int = 8, maxNgram: Int = 3, minNgram: Int = 2, patience: Int = 3) {
        precondition(1 <= minNgram && minNgram <= maxNgram, "need 1 <= min_ngram <= max_ngram, got \(minNgram), \(maxNgram)")
        precondition(maxDraft >= 1, "max_draft must be >= 1, got \(maxDraft)")
        self.maxDraft = maxDraft
        self.maxNgram = maxNgram
        self.minNgram = minNgram
        self.patience = patience
        reset()
    }

    /// Forget the history and the adaptation (a new run).
    public func reset() {
        length = max(1, maxDraft / 2)
        index = Dictionary(uniqueKeysWithValues: (minNgram...maxNgram).map { ($0, [[Int]: Int]()) })
        indexed = 0
        misses = 0
        pause = 1
        silent = 0
    }

    /// Index every n-gram that has a following token (so not the history's own suffix).
    private func extendIndex(_ history: [Int]) {
        if indexed < history.count {
            for end in indexed..<history.count {
                for n in minNgram...maxNgram where end >= n { index[n]![Array(history[(end - n)..<end])] = end }
            }
        }
        indexed = history.count
    }

    /// The tokens that followed the most recent earlier occurrence of the longest matching suffix.
    public func lookup(_ history: [Int], count: Int) -> [Int] {
        if history.count < indexed { reset() }  // a rewound history: index afresh
        extendIndex(history)
        for n in stride(from: maxNgram, through: minNgram, by: -1) where history.count >= n {
            guard let start = index[n]![Array(history[(history.count - n)...])] else { continue }
            // Python's slice: clipped to the history (a stale entry after a rewind while silent can point past it)
            return Array(history[min(start, history.count)..<min(start + count, history.count)])
        }
        return []
    }

    /// Up to `room` tokens to follow `history` (none while backing off).
    public func propose(_ history: [Int], room: Int) -> [Int] {
        if silent > 0 {
            silent -= 1
            extendIndex(history)
            return []
        }
        return lookup(history, count: min(room, length))
    }

    /// How many of the last proposals the verify call kept.
    public func observe(proposed: Int, accepted: Int) {
        if proposed == 0 { return }
        if accepted == proposed {
            length = min(maxDraft, 2 * length)
        } else if accepted > 0 {
            length = max(1, accepted + 1)
        } else {
            length = max(1, length / 2)
        }
        misses = accepted > 0 ? 0 : misses + 1
        if misses >= patience {
            silent = pause
            pause = min(64, 2 * pause)
            misses = 0
        } else if accepted > 0 {
            pause = 1
        }
    }
}
