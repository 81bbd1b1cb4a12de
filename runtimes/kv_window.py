"""KV of sliding-window layers held as a window, not the whole context. Torch-free.

A model with per-layer attention (Gemma 2/3, Mistral-style windows; `graph.kv.windows` in the manifest) attends a
sliding layer's last `window` positions only, so older rows of that layer are dead weight. `WindowedKVCache` is
the plain cache (`ContiguousKVCache`: the graph's outputs fed back) that drops them: a sliding layer keeps at most
`window - 1 + 2 * slack` rows and is cut back to `window - 1 + slack` when it grows past that (one copy every
`slack` tokens, not one per token). The `slack` rows left behind the window let speculative decoding and a chat
roll back up to `slack` tokens. The graph masks each layer from its own past length (bottom-right aligned), so a
layer's past may be shorter than the position: the rows it keeps are the newest, in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omnicoder.runtimes.kv_cache import ContiguousKVCache, as_numpy, check_truncate
from omnicoder.runtimes.kv_format import KVLayout

from omnicoder.errors import OmniCoderError

SLACK = 64  # rows kept behind a window for rollbacks, and the copy interval


class WindowedKVCache(ContiguousKVCache):
    """ContiguousKVCache whose sliding-window layers keep about one window of rows (module doc)."""

    def __init__(self, layout: KVLayout, slack: int = SLACK) -> None:
        self.slack = slack
        # graph input name -> its layer's window (sliding layers only)
        self.windows = {name: w for name, w in zip(layout.inputs, layout.input_windows(), strict=True) if w > 0}
        super().__init__(layout)

    def reset(self) -> None:
        super().reset()
        self.start = dict.fromkeys(self.windows, 0)  # absolute position of each windowed tensor's first row

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        super().update(presents, new_tokens)
        for name, window in self.windows.items():
            held = self._length - self.start[name]
            if held > window - 1 + 2 * self.slack:
                drop = held - (window - 1 + self.slack)
                self._values = {**self._values, name: np.ascontiguousarray(as_numpy(self._values[name])[:, :, drop:])}
                self.start[name] += drop

    def truncate(self, length: int) -> None:
        check_truncate(length, self._length)
        if length == self._length:
            return
        kept = {}
        for name, value in self._values.items():
            start = self.start.get(name, 0)
            if name in self.windows and start > 0 and length - start < self.windows[name] - 1:
                raise OmniCoderError(
                    f"cannot roll the KV cache back to {length} tokens: a sliding-window layer kept rows from "
                    f"{start} on only (rollbacks of up to {self.slack} tokens are supported)"
                )
            kept[name] = np.ascontiguousarray(as_numpy(value)[:, :, : length - start])
        self._values, self._length = kept, length
