"""The one KV-cache interface of the runtimes (`KVCache`). Torch-free.

A cache feeds the graph its past KV (`feeds`), takes the presents back (`update`) and knows its length (the next
token's absolute position); it also tells the backend what else a call needs (`extra_outputs`, `tokens_per_call`,
`context_limit`, `in_place` buffers grown by `reserve`), so the backend never looks past it. Kinds:
`ContiguousKVCache`, `SharedKVCache` (--kv-io shared), `PagedKVCache` (kv_paging.py), `RetentionKVCache`
(kv_retention.py); runtimes/cache_factory.py picks one.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from omnicoder.runtimes.kv_format import KVLayout

from omnicoder.errors import OmniCoderError

UNBOUNDED = 2**62  # positions of a cache that evicts: they stay absolute, the policy bounds what is attended
_ORT_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(uint8)": 1}


def as_numpy(value) -> np.ndarray:
    """A graph output or feed as numpy (onnxruntime values answer `.numpy()`; arrays pass through)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


class KVCache(Protocol):
    """The interface; its defaults suit a cache that holds every token and wants nothing but the presents."""

    in_place = False  # feeds() are fixed buffers bound as both past and present; the graph writes new rows
    tokens_per_call: int | None = None  # most tokens one call may take (a policy acting between calls); None: any
    extra_outputs: tuple[str, ...] = ()  # graph outputs besides logits and presents this cache wants from a call

    @property
    def length(self) -> int:
        """Tokens fed so far (evicted ones included): the absolute position of the next token."""

    def feeds(self) -> dict[str, Any]:
        """Past KV inputs by graph input name (numpy arrays or the graph's own output values)."""

    def update(self, presents: dict[str, Any], new_tokens: int) -> None:
        """Take the graph's present KV outputs (past + the new tokens) by graph input name."""

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens (speculative decoding's rollback, a chat's rewind)."""

    def reset(self) -> None: ...

    def nbytes(self) -> int:
        """Resident bytes of KV data."""

    def observe_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """The `extra_outputs` of a call over this cache's feeds (numpy, by name), before `update`."""

    def context_limit(self, model_context: int) -> int:
        """How far positions may run: the model's context while every token is attended (UNBOUNDED if evicting)."""
        return model_context

    def reserve(self, last_position: int) -> bool:
        """Make room for a call reaching `last_position` (in-place buffers); True when the buffers were replaced."""
        return False


def check_truncate(length: int, held: int) -> None:
    if not 0 <= length <= held:
        raise ValueError(f"cannot truncate a cache of {held} tokens to {length}")


class ContiguousKVCache(KVCache):
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
        """Keep the first `length` tokens (copies the kept rows once)."""
        check_truncate(length, self._length)
        if length < self._length:
            self._values = {name: np.ascontiguousarray(as_numpy(v)[:, :, :length]) for name, v in self._values.items()}
            self._length = length

    def nbytes(self) -> int:
        """Bytes of the KV tensors held (the stored, possibly quantized, form; OrtValues are not copied out)."""
        return sum(
            v.nbytes if isinstance(v, np.ndarray) else int(np.prod(v.shape())) * _ORT_ITEMSIZE[v.data_type()]
            for v in self._values.values()
        )


class SharedKVCache(KVCache):
    """KV for `--kv-io shared` bundles: one buffer [1, heads, capacity, width] per KV tensor, bound as both past
    and present so the graph writes new rows in place (slot = position; a rollback only moves the length). The
    buffers start at `capacity` tokens and double up to `limit`; `make_buffer(shape, dtype)` allocates one."""

    in_place = True

    def __init__(self, layout: KVLayout, capacity: int, limit: int, make_buffer) -> None:
        self.layout, self.capacity, self.limit, self._make_buffer = layout, capacity, limit, make_buffer
        self.buffers = self._allocate(capacity)
        self._length = 0

    def _allocate(self, capacity: int) -> dict[str, Any]:
        layout = self.layout
        return {
            name: self._make_buffer((1, layout.heads, capacity, width), dtype)
            for name, width, dtype in zip(layout.inputs, layout.widths, layout.dtypes, strict=True)
        }

    def reserve(self, last_position: int) -> bool:
        """Grow the buffers (doubling, up to the model's context) to hold `last_position`."""
        if last_position < self.capacity:
            return False
        if last_position >= self.limit:
            raise OmniCoderError(f"the context is full: the model's context holds {self.limit} tokens")
        self.grow(min(max(2 * self.capacity, 1 << last_position.bit_length()), self.limit))
        return True

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
        check_truncate(length, self._length)
        self._length = length

    def nbytes(self) -> int:
        """Bytes of the buffers (the capacity allocated so far)."""
        return self.capacity * self.layout.bytes_per_token()
