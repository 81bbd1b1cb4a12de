"""A preallocated per-layer KV cache for reference generation in PyTorch (the runtimes' caches are numpy).

Holds the entries the model returns (BNSH key/value per layer) in buffers that grow by doubling, so
appending a step copies only the new tokens; `truncate` rolls back rejected speculative tokens.
"""

from __future__ import annotations

from omnicoder.kv_slot import LayerKV


class TorchKVCache:
    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.length = 0
        self._buffers: list[LayerKV] = []

    def past(self) -> list[LayerKV] | None:
        """Views of the cached entries (None when empty), in the layout the model's forward takes."""
        if self.length == 0:
            return None
        return [(k[:, :, : self.length], v[:, :, : self.length]) for k, v in self._buffers]

    def append(self, new_kv: list[LayerKV]) -> None:
        t = new_kv[0][0].shape[2]
        need = self.length + t
        if not self._buffers or need > self._buffers[0][0].shape[2]:
            self._grow(new_kv, max(need, 2 * (self._buffers[0][0].shape[2] if self._buffers else 64)))
        for (kb, vb), (k, v) in zip(self._buffers, new_kv, strict=True):
            kb[:, :, self.length : need] = k
            vb[:, :, self.length : need] = v
        self.length = need

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def _grow(self, like: list[LayerKV], capacity: int) -> None:
        grown: list[LayerKV] = []
        for i, (k, v) in enumerate(like):
            kb = k.new_zeros(*k.shape[:2], capacity, k.shape[3])
            vb = v.new_zeros(*v.shape[:2], capacity, v.shape[3])
            if self._buffers:
                kb[:, :, : self.length] = self._buffers[i][0][:, :, : self.length]
                vb[:, :, : self.length] = self._buffers[i][1][:, :, : self.length]
            grown.append((kb, vb))
        self._buffers = grown

    def nbytes(self) -> int:
        return sum(
            (k[:, :, : self.length].numel() + v[:, :, : self.length].numel()) * k.element_size()
            for k, v in self._buffers
        )
