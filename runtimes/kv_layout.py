"""Names, widths and dtypes of a bundle's KV tensors, from its manifest's graph.kv section. Torch-free."""

from __future__ import annotations

import numpy as np
from omnicoder.runtimes.kv_format import dequantize


class KVLayout:
    """The KV tensors a decode step takes and returns.

    Quantized KV (`graph.kv.storage`) stores each cached row as several tensors (codes, scales, ...);
    `inputs`/`outputs`/`widths`/`dtypes` list every one of them, `key_slots` groups each layer's key tensors.
    """

    def __init__(self, kv: dict, n_layers: int) -> None:
        self.heads, self.key_dim, self.value_dim = kv["heads"], kv["key_dim"], kv["value_dim"]
        storage = kv.get("storage") or {}
        self.kv_dtype = storage.get("dtype", "fp32")
        self.rotation = storage.get("rotation", "none")
        self.key_group = storage.get("key_group")
        plain = [{"suffix": "", "dtype": "float32", "width": None}]
        self.inputs, self.outputs, self.widths, self.dtypes = [], [], [], []
        self.key_slots: list[list[str]] = []  # per layer: the input names storing its keys (codes first)
        for layer in range(n_layers):
            slots = [("past_key", "present_key", self.key_dim, storage.get("key_components") or plain)]
            if kv.get("past_value"):
                slots.append(("past_value", "present_value", self.value_dim, storage.get("value_components") or plain))
            for past, present, width, components in slots:
                names = []
                for part in components:
                    names.append(kv[past].format(layer=layer) + part["suffix"])
                    self.inputs.append(names[-1])
                    self.outputs.append(kv[present].format(layer=layer) + part["suffix"])
                    self.widths.append(part["width"] or width)
                    self.dtypes.append(np.dtype(part["dtype"]))
                if past == "past_key":
                    self.key_slots.append(names)

    def empty(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {
            name: np.zeros((batch, self.heads, 0, w), dtype)
            for name, w, dtype in zip(self.inputs, self.widths, self.dtypes, strict=True)
        }

    def bytes_per_token(self) -> int:
        """Stored KV bytes of one token over all layers."""
        return sum(self.heads * w * d.itemsize for w, d in zip(self.widths, self.dtypes, strict=True))

    def dequantized_keys(self, arrays: dict[str, np.ndarray], layer: int) -> np.ndarray:
        """Float keys [..., key_dim] of one layer from its stored tensors (in the rotated space if rotated)."""
        parts = [arrays[name] for name in self.key_slots[layer]]
        return dequantize(parts, self.kv_dtype, self.key_dim, self.key_group)
