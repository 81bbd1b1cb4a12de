package ai.omnicoder.core

/** Which pages a step attends to (runtimes/kv_paging.py PagingPolicy, without predicted pages). */
data class PagingPolicy(val pageLen: Int = 64, val window: Int = 0, val sinkPages: Int = 0) {
    init {
        require(pageLen > 0 && window >= 0 && sinkPages >= 0) { "paging: page-len must be > 0, window and sinks >= 0" }
    }
}

/** One KV tensor as bytes in native order, BNSH: shape [1, heads, tokens, width]. */
class KvTensor(val name: String, val dtype: String, val shape: LongArray, val data: ByteArray)

/**
 * The KV cache in pages of `pageLen` tokens, all layers of a token range per page (runtimes/kv_paging.py
 * PagedKVCache). Each step feeds only the attended pages (sinks + the window); positions stay absolute.
 * Pages that can never be attended again (outside sinks and window) are dropped, so resident memory is
 * bounded by the plan from [PagingPlan.plan] instead of the full context. A bundle with a retention sidecar uses
 * [RetentionStore] instead (the two are exclusive, as in the Python runner).
 */
class PagedKvStore(val layout: KvLayout, val policy: PagingPolicy) {
    class Page(val start: Int) {
        var filled = 0
        var data: Map<String, ByteArray>? = null // per input: [heads, pageLen, width] rows; null when dropped
    }

    val pages = ArrayList<Page>()
    var length = 0
        private set

    /**
     * Tokens behind the window whose pages are kept for rollbacks ([truncate]): speculative decoding rolls back at
     * most its draft length, so a session that verifies drafts sets this to it. 0: pages are dropped as soon as the
     * window leaves them.
     */
    var rollbackSlack = 0
        set(value) {
            require(value >= 0) { "rollback slack must be >= 0, got $value" }
            field = value
        }

    fun reset() {
        pages.clear()
        length = 0
    }

    fun windowPages(): List<Int> {
        if (policy.window <= 0) return pages.indices.toList()
        val first = maxOf(0, length - policy.window)
        return pages.indices.filter { pages[it].start + pages[it].filled > first }
    }

    fun attendedPages(): List<Int> {
        val keep = sortedSetOf<Int>()
        keep.addAll(0 until minOf(policy.sinkPages, pages.size))
        keep.addAll(windowPages())
        return keep.toList()
    }

    /** The attended tokens' rows per KV input, [1, heads, n, width], in cache order. */
    fun feeds(): Map<String, KvTensor> {
        val attended = attendedPages()
        val tokens = attended.sumOf { pages[it].filled }
        val out = LinkedHashMap<String, KvTensor>()
        for ((index, name) in layout.inputs.withIndex()) {
            val row = layout.rowBytes(index)
            val data = ByteArray(layout.heads * tokens * row)
            var offset = 0
            for (head in 0 until layout.heads) {
                for (p in attended) {
                    val page = pages[p]
                    val src = page.data?.get(name) ?: error("page $p was dropped but is attended")
                    System.arraycopy(src, head * policy.pageLen * row, data, offset, page.filled * row)
                    offset += page.filled * row
                }
            }
            val shape = longArrayOf(1, layout.heads.toLong(), tokens.toLong(), layout.widths[index].toLong())
            out[name] = KvTensor(name, layout.dtypes[index], shape, data)
        }
        return out
    }

    /** Append the last `newTokens` rows of each present tensor (keyed by past input name; [1, heads, total, width]). */
    fun update(presents: Map<String, KvTensor>, newTokens: Int) {
        var done = 0
        while (done < newTokens) {
            if (pages.isEmpty() || pages.last().filled == policy.pageLen) {
                val page = Page(length)
                page.data = layout.inputs.withIndex().associate { (i, name) ->
                    name to ByteArray(layout.heads * policy.pageLen * layout.rowBytes(i))
                }
                pages.add(page)
            }
            val page = pages.last()
            val take = minOf(policy.pageLen - page.filled, newTokens - done)
            for ((index, name) in layout.inputs.withIndex()) {
                val present = presents[name] ?: error("no present tensor for $name")
                val row = layout.rowBytes(index)
                val total = present.shape[2].toInt()
                val first = total - newTokens + done
                val target = page.data!!.getValue(name)
                for (head in 0 until layout.heads) {
                    System.arraycopy(
                        present.data, (head * total + first) * row,
                        target, (head * policy.pageLen + page.filled) * row, take * row,
                    )
                }
            }
            page.filled += take
            done += take
            length += take
        }
        dropUnreachable()
    }

    /** Keep the first `length` tokens (speculative decoding's rollback; runtimes/kv_paging.py truncate). */
    fun truncate(length: Int) {
        require(length in 0..this.length) { "cannot truncate a cache of ${this.length} tokens to $length" }
        while (pages.isNotEmpty() && pages.last().start >= length) pages.removeAt(pages.lastIndex)
        if (pages.isNotEmpty()) {
            val last = pages.last()
            check(last.data != null) { "page ${pages.lastIndex} was dropped; raise rollbackSlack to the draft length" }
            last.filled = length - last.start
        }
        this.length = length
    }

    /** Resident KV bytes (pages not dropped). */
    fun residentBytes(): Long = pages.sumOf { p -> p.data?.values?.sumOf { it.size.toLong() } ?: 0L }

    fun residentPages(): Int = pages.count { it.data != null }

    /** Drop the pages outside the sinks, the window and the rollback slack behind it (never the last page). */
    private fun dropUnreachable() {
        if (policy.window <= 0) return
        val first = maxOf(0, length - policy.window - rollbackSlack)
        for ((i, page) in pages.withIndex()) {
            if (i >= policy.sinkPages && page.start + page.filled <= first && i != pages.lastIndex) page.data = null
        }
    }
}
