"""The one KV-cache interface of the runtimes. Torch-free.

A cache hands the decode-step graph its past KV tensors (`feeds`), takes the graph's present KV back
(`update`), and knows its length and the absolute position of the next token. Implementations differ
in how they hold the tensors: `ContiguousKVCache` keeps the graph's own output buffers (onnxruntime
OrtValues passed straight back in, no copies); paging, windowing, quantization and retention plug in
behind the same interface.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class KVCache(Protocol):
    @property
    def length(self) -> int:
        """Tokens held."""

    def feeds(self) -> dict[str, Any]:
        """Past KV inputs by graph input name (numpy arrays or OrtValues)."""

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        """Take the graph's present KV outputs (past + the new tokens) by graph input name."""

    def reset(self) -> None: ...

    def nbytes(self) -> int:
        """Resident bytes of KV data."""


class KVLayout:
    """Names and shapes of a bundle's KV tensors, from its manifest's graph.kv section."""

    def __init__(self, kv: dict, n_layers: int) -> None:
        self.heads, self.key_dim, self.value_dim = kv["heads"], kv["key_dim"], kv["value_dim"]
        self.inputs, self.outputs, self.widths = [], [], []
        for layer in range(n_layers):
            slots = [("past_key", "present_key", self.key_dim)]
            if kv.get("past_value"):
                slots.append(("past_value", "present_value", self.value_dim))
            for past, present, width in slots:
                self.inputs.append(kv[past].format(layer=layer))
                self.outputs.append(kv[present].format(layer=layer))
                self.widths.append(width)

    def empty(self, batch: int = 1, dtype=np.float32) -> dict[str, np.ndarray]:
        return {name: np.zeros((batch, self.heads, 0, w), dtype) for name, w in zip(self.inputs, self.widths)}


class ContiguousKVCache:
    """Holds the graph's present outputs and feeds them back as the next step's past (zero-copy)."""

    def __init__(self, layout: KVLayout, to_device=None) -> None:
        self.layout = layout
        self._to_device = to_device or (lambda array: array)
        self.reset()

    def reset(self) -> None:
        self._length = 0
        self._values = {name: self._to_device(arr) for name, arr in self.layout.empty().items()}

    @property
    def length(self) -> int:
        return self._length

    def feeds(self) -> dict[str, Any]:
        return self._values

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        self._values = presents
        self._length += new_tokens

    def nbytes(self) -> int:
        per_token = sum(self.layout.heads * w * 4 for w in self.layout.widths)
        return per_token * self._length
