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
from omnicoder.runtimes.kv_layout import KVLayout


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


class ContiguousKVCache:
    """Holds the graph's present outputs and feeds them back as the next step's past (zero-copy)."""

    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.reset()

    def reset(self) -> None:
        self._length = 0
        self._values = self.layout.empty()  # numpy until the first step, then the graph's own output values

    @property
    def length(self) -> int:
        return self._length

    def feeds(self) -> dict[str, Any]:
        return self._values

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        self._values = presents
        self._length += new_tokens

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens (speculative decoding's rollback; copies the kept rows once)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        if length < self._length:
            self._values = {
                name: np.ascontiguousarray((v if isinstance(v, np.ndarray) else v.numpy())[:, :, :length])
                for name, v in self._values.items()
            }
            self._length = length

    def nbytes(self) -> int:
        """Bytes of the KV tensors held (what the graph returned: the stored, possibly quantized, form)."""
        return sum(_nbytes(value) for value in self._values.values())


_ORT_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(uint8)": 1}


def _nbytes(value) -> int:
    """Bytes of a numpy array or an onnxruntime OrtValue (without copying it out)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    return int(np.prod(value.shape())) * _ORT_ITEMSIZE[value.data_type()]


class SharedKVCache:
    """KV for `--kv-io shared` bundles: one onnxruntime buffer per KV tensor [1, heads, capacity, width], bound
    as both the past input and the present output, so the graph writes each step's new rows in place.

    Slot = absolute position; the rows in use are the first `length`. A rollback only moves the length back
    (later rows are overwritten by the next step). `make_buffer(shape, dtype)` allocates one device buffer.
    """

    def __init__(self, layout: KVLayout, capacity: int, make_buffer) -> None:
        self.layout, self.capacity, self._make_buffer = layout, capacity, make_buffer
        self.buffers = self._allocate(capacity)
        self._length = 0

    def _allocate(self, capacity: int) -> dict[str, Any]:
        layout = self.layout
        return {
            name: self._make_buffer((1, layout.heads, capacity, width), dtype)
            for name, width, dtype in zip(layout.inputs, layout.widths, layout.dtypes, strict=True)
        }

    def grow(self, capacity: int) -> None:
        """New buffers of `capacity` tokens holding the rows in use (the old ones are dropped: rebind calls)."""
        if capacity <= self.capacity:
            return
        grown = self._allocate(capacity)
        for name, buffer in grown.items():
            rows = np.zeros(buffer.shape(), self.buffers[name].numpy().dtype)
            rows[:, :, : self._length] = self.buffers[name].numpy()[:, :, : self._length]
            buffer.update_inplace(rows)
        self.buffers, self.capacity = grown, capacity

    def reset(self) -> None:
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def feeds(self) -> dict[str, Any]:
        return self.buffers

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        """The graph already wrote the rows; only the length moves."""
        if self._length + new_tokens > self.capacity:
            raise ValueError(f"the KV buffers hold {self.capacity} tokens; {self._length + new_tokens} were fed")
        self._length += new_tokens

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        self._length = length

    def nbytes(self) -> int:
        """Bytes of the buffers (the capacity allocated so far)."""
        return self.capacity * self.layout.bytes_per_token()
