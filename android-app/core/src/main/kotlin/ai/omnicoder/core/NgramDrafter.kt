package ai.omnicoder.core

/**
 * Prompt-lookup drafting with an adaptive draft length: runtimes/drafters.py NgramDrafter, proposal for proposal.
 *
 * The history's last n tokens (n from [maxNgram] down to [minNgram]) are looked up among earlier n-grams of the
 * history (the most recent occurrence wins) and the tokens that followed are proposed, [length] of them. The length
 * doubles after a fully accepted draft (up to [maxDraft]), becomes accepted + 1 after a partial one and halves after
 * a rejected first guess; after [patience] calls in a row with nothing accepted the drafter stays silent for a pause
 * that doubles each time (up to 64 calls). Costs no model call.
 */
class NgramDrafter(val maxDraft: Int = 8, val maxNgram: Int = 3, val minNgram: Int = 2, val patience: Int = 3) {
    /** Tokens the next proposal may have (before `room` caps it). */
    var length = 1
        private set
    var misses = 0
        private set
    var pause = 1
        private set
    var silent = 0
        private set

    /** n-grams ending before this history position are in the index. */
    var indexed = 0
        private set
    private var index = HashMap<Int, HashMap<List<Int>, Int>>()

    init {
        require(minNgram in 1..maxNgram) { "need 1 <= min_ngram <= max_ngram, got $minNgram, $maxNgram" }
        require(maxDraft >= 1) { "max_draft must be >= 1, got $maxDraft" }
        reset()
    }

    /** Forget the history and the adaptation (a new run). */
    fun reset() {
        length = maxOf(1, maxDraft / 2)
        index = HashMap((minNgram..maxNgram).associateWith { HashMap<List<Int>, Int>() })
        indexed = 0
        misses = 0
        pause = 1
        silent = 0
    }

    /** Index every n-gram that has a following token (so not the history's own suffix). */
    private fun extendIndex(history: List<Int>) {
        for (end in indexed until history.size) {
            for (n in minNgram..maxNgram) if (end >= n) index.getValue(n)[history.subList(end - n, end).toList()] = end
        }
        indexed = history.size
    }

    /** The tokens that followed the most recent earlier occurrence of the longest matching suffix. */
    fun lookup(history: List<Int>, count: Int): List<Int> {
        if (history.size < indexed) reset() // a rewound history: index afresh
        extendIndex(history)
        for (n in maxNgram downTo minNgram) {
            if (history.size < n) continue
            val start = index.getValue(n)[history.subList(history.size - n, history.size)] ?: continue
            // Python's slice: clipped to the history (a stale entry after a rewind while silent can point past it)
            return history.subList(minOf(start, history.size), minOf(start + count, history.size)).toList()
        }
        return emptyList()
    }

    /** Up to `room` tokens to follow `history` (none while backing off). */
    fun propose(history: List<Int>, room: Int): List<Int> {
        if (silent > 0) {
            silent--
            extendIndex(history)
            return emptyList()
        }
        return lookup(history, minOf(room, length))
    }

    /** How many of the last proposals the verify call kept. */
    fun observe(proposed: Int, accepted: Int) {
        if (proposed == 0) return
        length = when {
            accepted == proposed -> minOf(maxDraft, 2 * length)
            accepted > 0 -> maxOf(1, accepted + 1)
            else -> maxOf(1, length / 2)
        }
        misses = if (accepted > 0) 0 else misses + 1
        if (misses >= patience) {
            silent = pause
            pause = minOf(64, 2 * pause)
            misses = 0
        } else if (accepted > 0) {
            pause = 1
        }
    }
}
