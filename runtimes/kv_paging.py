"""A paged KV cache with windowing and spill to a memory-mapped file. Torch-free (numpy).

Every token's KV rows are kept in pages of `page_len` tokens (all layers of a token range). Each call attends the
first `sink_pages` pages, the pages of the last `window` tokens and up to `predicted_pages` more chosen by `select`
(by default Quest scores of the last call's queries, the graph's `query.{i}` outputs, against page key summaries).
Positions stay absolute, so dropping pages never shifts RoPE. Pages beyond `ram_budget_bytes` spill to a
memory-mapped file (oldest evictable first, never sinks or the window) and come back bit-identical.
A sliding-window layer (`KVLayout.windows`) is fed only the pages of its last `window - 1` tokens, and its rows in
pages older than that (and SLACK tokens for rollbacks) are dropped, as runtimes/kv_window.py does for the plain cache.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omnicoder.runtimes.kv_cache import UNBOUNDED, KVCache, as_numpy, check_truncate
from omnicoder.runtimes.kv_format import KVLayout, rotate
from omnicoder.runtimes.kv_window import SLACK

from omnicoder.errors import OmniCoderError


@dataclass
class PagingPolicy:
    page_len: int = 64
    window: int = 0  # tokens of recent context always attended; 0 = everything (no eviction)
    sink_pages: int = 0  # StreamingLLM sinks; omnicoder-tiny is better without (docs/benchmarks.md)
    predicted_pages: int = 0
    ram_budget_bytes: int = 0  # resident KV bytes before pages spill; 0 = never spill

    def validate(self) -> PagingPolicy:
        for name in ("page_len", "window", "sink_pages", "predicted_pages", "ram_budget_bytes"):
            if getattr(self, name) < 0 or (name == "page_len" and self.page_len == 0):
                raise OmniCoderError(f"paging: {name.replace('_', '-')} must be >= 0 (page-len > 0)")
        return self


@dataclass
class Page:
    start: int  # position index (in cache order) of the first token
    filled: int = 0
    arrays: dict[str, np.ndarray] | None = None  # resident rows by KV input name: [heads, page_len, width]
    slot: int = -1  # spill-file slot when spilled
    dropped: set[str] = field(default_factory=set)  # sliding-window layers' inputs whose rows are gone
    summary_min: dict[str, np.ndarray] = field(default_factory=dict)  # per-channel min of the keys
    summary_max: dict[str, np.ndarray] = field(default_factory=dict)


class SpillFile:
    """Fixed-size page slots in a memory-mapped temporary file."""

    def __init__(self, page_bytes: int, directory: str | None = None) -> None:
        self.page_bytes = page_bytes
        # lives as long as the cache (closed in close()), so no context manager
        self._file = tempfile.NamedTemporaryFile(prefix="omnicoder-kv-", suffix=".spill", dir=directory)  # noqa: SIM115
        self._map: np.memmap | None = None
        self.slots = 0
        self._used = 0
        self._free: list[int] = []

    def write(self, data: bytes) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot, self._used = self._used, self._used + 1
            if self._used > self.slots:  # grow the file
                self.slots = max(self._used, 2 * self.slots, 4)
                self._file.truncate(self.slots * self.page_bytes)
                self._map = np.memmap(self._file.name, dtype=np.uint8, mode="r+", shape=(self.slots * self.page_bytes,))
        self._map[slot * self.page_bytes : slot * self.page_bytes + len(data)] = np.frombuffer(data, np.uint8)
        return slot

    def read(self, slot: int, size: int) -> bytes:
        return bytes(self._map[slot * self.page_bytes : slot * self.page_bytes + size])

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        self._map = None
        self._file.close()


class PagedKVCache(KVCache):
    """KV pages behind the runtimes' KV-cache interface; one call takes at most a page of tokens.

    `queries` (graph query output -> the layer's key input) asks each call for the queries that pick the
    predicted pages; `select(cache, candidates)` overrides that choice.
    """

    def __init__(
        self,
        layout: KVLayout,
        policy: PagingPolicy,
        select: Callable[[PagedKVCache, list[int]], list[int]] | None = None,
        spill_dir: str | Path | None = None,
        queries: dict[str, str] | None = None,
    ) -> None:
        self.layout, self.policy = layout, policy.validate()
        self.select = select or PagedKVCache.by_last_queries
        self.tokens_per_call = policy.page_len
        self.queries = queries or {}
        self.extra_outputs = tuple(self.queries)
        self._spill_dir = str(spill_dir) if spill_dir else None
        widths = dict(zip(layout.inputs, layout.widths, strict=True))
        self._shapes = {name: (layout.heads, policy.page_len, w) for name, w in widths.items()}
        self._dtypes = dict(zip(layout.inputs, layout.dtypes, strict=True))
        self._bytes = {n: self._dtypes[n].itemsize * math.prod(s) for n, s in self._shapes.items()}
        self.page_bytes = sum(self._bytes.values())
        self._windows = {n: w for n, w in zip(layout.inputs, layout.input_windows(), strict=True) if w > 0}
        self._key_names = [names[0] for names in layout.key_slots]  # summaries are keyed by the codes input
        self.spill: SpillFile | None = None
        self.reset()

    def reset(self) -> None:
        if getattr(self, "spill", None) is not None:
            self.spill.close()
        self.spill = None
        self.pages: list[Page] = []
        self._dropped_upto = dict.fromkeys(self._windows, 0)  # pages below this had a windowed input's rows dropped
        self._length = 0
        self.attended: list[int] = []
        self.last_queries: dict[str, np.ndarray] = {}  # key input -> the last call's last-token queries

    @property
    def length(self) -> int:
        return self._length

    def feeds(self) -> dict[str, np.ndarray]:
        """The attended tokens' KV rows, [1, heads, n, width] per input, in cache order."""
        self.attended = self.attended_pages()
        out = {}
        for name in self.layout.inputs:
            pages = self._window_tail(self._windows[name]) if name in self._windows else self.attended
            parts = [self._page_arrays(i)[name][:, : self.pages[i].filled] for i in pages]
            heads, _, width = self._shapes[name]
            empty = np.zeros((heads, 0, width), self._dtypes[name])
            out[name] = (np.concatenate(parts, axis=1) if parts else empty)[None]
        return out

    def update(self, presents: dict, new_tokens: int) -> None:
        """Append the last `new_tokens` rows of each present tensor (the graph returns attended + new)."""
        arrays = {name: as_numpy(value)[0, :, -new_tokens:] for name, value in presents.items()}
        done = 0
        while done < new_tokens:
            if not self.pages or self.pages[-1].filled == self.policy.page_len:
                self.pages.append(Page(start=self._length, arrays=self._empty_page()))
            page = self.pages[-1]
            take = min(self.policy.page_len - page.filled, new_tokens - done)
            target = self._page_arrays(len(self.pages) - 1)
            for name, rows in arrays.items():
                target[name][:, page.filled : page.filled + take] = rows[:, done : done + take]
            self._summarize(page, page.filled, page.filled + take)
            page.filled += take
            done += take
            self._length += take
        self._drop_outside_windows()
        self._enforce_budget()

    def _window_tail(self, window: int, margin: int = 0) -> list[int]:
        """The pages holding the last `window - 1 + margin` tokens (pages cover positions from 0 in order)."""
        first = max(0, self._length - (window - 1) - margin)
        return list(range(first // self.policy.page_len, len(self.pages)))

    def _drop_outside_windows(self) -> None:
        """Free a sliding-window layer's rows in resident pages it will never attend again (SLACK kept for
        rollbacks); spilled pages stay on disk as they are. Each page is visited once per layer input."""
        for name, window in self._windows.items():
            end = min(len(self.pages), max(0, self._length - (window - 1) - SLACK) // self.policy.page_len)
            for page in self.pages[self._dropped_upto[name] : end]:
                if page.arrays is not None:
                    page.arrays.pop(name)
                    page.dropped.add(name)
            self._dropped_upto[name] = max(self._dropped_upto[name], end)

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens (speculative decoding's rollback). Page summaries stay valid bounds."""
        check_truncate(length, self._length)
        while self.pages and self.pages[-1].start >= length:
            page = self.pages.pop()
            if page.arrays is None:
                self.spill.release(page.slot)
        self._dropped_upto = {n: min(i, len(self.pages)) for n, i in self._dropped_upto.items()}
        if self.pages:
            self._page_arrays(len(self.pages) - 1)  # a spilled tail comes back before it grows again
            self.pages[-1].filled = length - self.pages[-1].start
        self._length = length

    def nbytes(self) -> int:
        """Resident KV bytes (pages in RAM, not spilled)."""
        return sum(self._page_bytes(p) for p in self.pages if p.arrays is not None)

    def _page_bytes(self, page: Page) -> int:
        return self.page_bytes - sum(self._bytes[n] for n in page.dropped)

    def context_limit(self, model_context: int) -> int:
        """With a window, positions run past the model's context (they stay absolute)."""
        return model_context if self.policy.window <= 0 else UNBOUNDED

    def observe_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """The call's queries (its last token's, as the stored keys see them) pick the next call's pages."""
        self.last_queries = {key: self._in_key_space(outputs[q][0, :, -1]) for q, key in self.queries.items()}

    def _in_key_space(self, query: np.ndarray) -> np.ndarray:
        """Queries rotated like the keys when the KV rows are Hadamard-rotated."""
        return rotate(query, self.layout.key_group) if self.layout.rotation == "hadamard" else query

    def window_pages(self) -> list[int]:
        if self.policy.window <= 0:
            return list(range(len(self.pages)))
        first = max(0, self._length - self.policy.window)
        return [i for i, p in enumerate(self.pages) if p.start + p.filled > first]

    def attended_pages(self) -> list[int]:
        keep = set(range(min(self.policy.sink_pages, len(self.pages)))) | set(self.window_pages())
        if self.policy.predicted_pages > 0:
            candidates = [i for i in range(len(self.pages)) if i not in keep]
            keep |= set(self.select(self, candidates)[: self.policy.predicted_pages])
        return sorted(keep)

    def by_last_queries(self, candidates: list[int]) -> list[int]:
        """Predicted pages: the last call's queries scored against each candidate page's key summary."""
        return self.quest_scores(self.last_queries, candidates) if self.last_queries else []

    def quest_scores(self, query: dict[str, np.ndarray], candidates: list[int]) -> list[int]:
        """Quest (Tang et al. 2024): rank pages by an upper bound of q·k from per-channel key min/max.

        `query` maps KV input names to [heads_q, key_dim] query rows of the current step for that layer's keys.
        """
        scores = []
        for i in candidates:
            page = self.pages[i]
            total = 0.0
            for name, q in query.items():
                lo, hi = page.summary_min[name], page.summary_max[name]  # [heads, width]
                heads = lo.shape[0]
                qh = q.reshape(heads, -1, q.shape[-1])  # group query heads onto their KV head
                total += float(np.maximum(qh * lo[:, None], qh * hi[:, None]).sum(-1).max())
            scores.append((total, i))
        return [i for _, i in sorted(scores, reverse=True)]

    def _empty_page(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, self._dtypes[name]) for name, shape in self._shapes.items()}

    def _page_arrays(self, index: int) -> dict[str, np.ndarray]:
        page = self.pages[index]
        if page.arrays is None:  # spilled: bring it back
            data = self.spill.read(page.slot, self._page_bytes(page))
            page.arrays, offset = {}, 0
            for name, shape in self._shapes.items():
                if name in page.dropped:
                    continue
                dtype = self._dtypes[name]
                size = dtype.itemsize * math.prod(shape)
                page.arrays[name] = np.frombuffer(data[offset : offset + size], dtype).reshape(shape).copy()
                offset += size
            self.spill.release(page.slot)
            page.slot = -1
        return page.arrays

    def _summarize(self, page: Page, start: int, end: int) -> None:
        """Fold key rows [start, end) of the page into its per-channel min/max (the Quest summary)."""
        for layer, key_name in enumerate(self._key_names):
            stored = {name: page.arrays[name][:, start:end] for name in self.layout.key_slots[layer]}
            rows = self.layout.dequantized_keys(stored, layer)
            lo, hi = rows.min(axis=1), rows.max(axis=1)
            if key_name in page.summary_min:
                lo, hi = np.minimum(lo, page.summary_min[key_name]), np.maximum(hi, page.summary_max[key_name])
            page.summary_min[key_name], page.summary_max[key_name] = lo, hi

    def _enforce_budget(self) -> None:
        budget = self.policy.ram_budget_bytes
        if budget <= 0 or self.nbytes() <= budget:
            return
        protected = set(range(min(self.policy.sink_pages, len(self.pages)))) | set(self.window_pages())
        for i, page in enumerate(self.pages):
            if self.nbytes() <= budget:
                break
            if i in protected or page.arrays is None:
                continue
            if self.spill is None:
                self.spill = SpillFile(self.page_bytes, self._spill_dir)
            page.slot = self.spill.write(
                b"".join(page.arrays[n].tobytes() for n in self._shapes if n not in page.dropped)
            )
            page.arrays = None

    def spilled_pages(self) -> int:
        return sum(1 for p in self.pages if p.arrays is None)
