"""The stored KV formats (`omnicoder-export --kv`) in numpy, torch-free: group choice, row bytes, quantize,
dequantize, the Hadamard rotation, and `KVLayout`: a bundle's KV tensors (names, widths, dtypes) from graph.kv.

A cached row of width W is cut into groups of `group_for(W)` values: the largest power of two <= the requested
group that divides W (MLA rows of 96 + 16 -> 16). Stored tensors per row:

- fp32 / fp16: the row itself.
- u8: codes uint8 [.., W], `_scale` and `_min` float16 [.., W / g]; x = code * scale + min (asymmetric).
- nf4: QLoRA's 16 NormalFloat-4 levels, two codes a byte (low nibble first): codes uint8 [.., ceil(W / 2)],
  `_scale` float16 [.., W / g] (the group's absmax); x = NF4[code] * scale.

The exported graph stores new tokens itself (omnicoder.kv_quant, torch, bit-identical); runtimes use this module
to size the cache (kv_budget), read stored keys back (Quest page summaries), compress retained tokens
(kv_retention) and rotate queries. The app cores mirror it (KvCompress.kt / .swift).
"""

from __future__ import annotations

import math

import numpy as np

KV_DTYPES = ("fp32", "fp16", "u8", "nf4")
ELEMENT_BYTES = {"fp32": 4.0, "fp16": 2.0, "u8": 1.0, "nf4": 0.5}
GROUP_OVERHEAD_BYTES = {"fp32": 0, "fp16": 0, "u8": 4, "nf4": 2}  # fp16 scale (+ fp16 minimum for u8)
QUANT_GROUP = 32  # the export's default --kv-group
MIN_SCALE = 1e-6  # smallest scale stored (keeps all-equal groups finite)
# QLoRA's NormalFloat-4 levels (Dettmers et al. 2023, appendix E); omnicoder.kv_quant uses these too
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
    -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171066284,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)  # fmt: skip
NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2  # a value takes the level of the interval it falls in


def group_for(width: int, group: int = QUANT_GROUP) -> int:
    """The group used for rows of `width`: `group` halved until it divides the width."""
    while group > 1 and width % group:
        group //= 2
    return group


def row_bytes(width: int, kv_dtype: str, group: int = QUANT_GROUP) -> int:
    """Bytes of one stored row of `width` values in `kv_dtype`, group scales included."""
    if width <= 0:
        return 0
    groups = width // group_for(width, group) if GROUP_OVERHEAD_BYTES[kv_dtype] else 0
    return math.ceil(width * ELEMENT_BYTES[kv_dtype]) + groups * GROUP_OVERHEAD_BYTES[kv_dtype]


def components(kv_dtype: str, width: int, group: int) -> list[tuple[str, str, int]]:
    """(name suffix, numpy dtype, width) of each tensor storing rows of `width` cut into groups of `group`
    (the group itself, as `group_for` chose it; unused for fp32/fp16)."""
    if kv_dtype == "fp32":
        return [("", "float32", width)]
    if kv_dtype == "fp16":
        return [("", "float16", width)]
    if kv_dtype == "u8":
        return [("", "uint8", width), ("_scale", "float16", width // group), ("_min", "float16", width // group)]
    return [("", "uint8", width // 2), ("_scale", "float16", width // group)]


def quantize(rows: np.ndarray, kv_dtype: str, group: int) -> list[np.ndarray]:
    """Float rows [..., W] -> the stored tensors (codes first, then scales and minima)."""
    if kv_dtype in ("fp32", "fp16"):
        return [rows.astype(np.float32 if kv_dtype == "fp32" else np.float16)]
    lead, width = rows.shape[:-1], rows.shape[-1]
    g = group_for(width, group)
    grouped = rows.reshape(*lead, width // g, g)
    if kv_dtype == "u8":
        lo, hi = grouped.min(-1, keepdims=True), grouped.max(-1, keepdims=True)
        low = lo.astype(np.float16)
        scale = np.maximum((hi - lo) / 255, MIN_SCALE).astype(np.float16)
        codes = np.clip(np.round((grouped - low.astype(np.float32)) / scale.astype(np.float32)), 0, 255)
        # a NaN code only comes with a NaN or infinite scale, so any code gives the same NaN back (as the app cores)
        return [np.nan_to_num(codes).astype(np.uint8).reshape(rows.shape), scale[..., 0], low[..., 0]]
    scale = np.maximum(np.abs(grouped).max(-1, keepdims=True), MIN_SCALE).astype(np.float16)
    index = np.searchsorted(NF4_MIDPOINTS, grouped / scale.astype(np.float32), side="left").reshape(rows.shape)
    if width % 2:
        index = np.concatenate((index, np.zeros((*lead, 1), index.dtype)), axis=-1)
    return [(index[..., 0::2] | index[..., 1::2] << 4).astype(np.uint8), scale[..., 0]]


def dequantize(parts: list[np.ndarray], kv_dtype: str, width: int, group: int | None = None) -> np.ndarray:
    """The stored tensors of rows -> float32 rows [..., width]."""
    if kv_dtype in ("fp32", "fp16"):
        return parts[0].astype(np.float32)
    lead = parts[0].shape[:-1]
    g = group_for(width, group)
    scale = parts[1].astype(np.float32)[..., None]
    if kv_dtype == "u8":
        codes = parts[0].astype(np.float32).reshape(*lead, width // g, g)
        return (codes * scale + parts[2].astype(np.float32)[..., None]).reshape(*lead, width)
    packed = parts[0]
    index = np.stack((packed & 15, packed >> 4), axis=-1).reshape(*lead, -1)[..., :width]
    return (NF4_LEVELS[index].reshape(*lead, width // g, g) * scale).reshape(*lead, width)


def round_trip(rows: np.ndarray, kv_dtype: str, group: int) -> np.ndarray:
    """Rows [..., W] through storage and back: what is read once they are stored."""
    return dequantize(quantize(rows, kv_dtype, group), kv_dtype, rows.shape[-1], group).astype(rows.dtype)


def hadamard(n: int) -> np.ndarray:
    """Normalized Sylvester Hadamard matrix [n, n] (symmetric, orthogonal)."""
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n, dtype=np.float32)


def rotate(x: np.ndarray, group: int) -> np.ndarray:
    """The block Hadamard rotation of the rows (its own inverse)."""
    shape = x.shape
    return (x.reshape(*shape[:-1], shape[-1] // group, group) @ hadamard(group)).reshape(shape)


class KVLayout:
    """The KV tensors a decode step takes and returns.

    Quantized KV (`graph.kv.storage`) stores each cached row as several tensors (codes, scales, ...);
    `inputs`/`outputs`/`widths`/`dtypes` list every one of them, `key_slots` groups each layer's key tensors,
    `layers` names each tensor's layer; `windows` (graph.kv.windows) is each layer's attention window (0: full).
    """

    def __init__(self, kv: dict, n_layers: int) -> None:
        self.heads, self.key_dim, self.value_dim = kv["heads"], kv["key_dim"], kv["value_dim"]
        storage = kv.get("storage") or {}
        self.kv_dtype = storage.get("dtype", "fp32")
        self.rotation = storage.get("rotation", "none")
        self.key_group = storage.get("key_group")
        plain = [{"suffix": "", "dtype": "float32", "width": None}]
        self.inputs, self.outputs, self.widths, self.dtypes, self.layers = [], [], [], [], []
        self.key_slots: list[list[str]] = []  # per layer: the input names storing its keys (codes first)
        self.windows: list[int] = list(kv.get("windows") or [0] * n_layers)
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
                    self.layers.append(layer)
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

    def input_windows(self) -> list[int]:
        """Each KV tensor's layer window (0: the layer attends the whole context)."""
        return [self.windows[layer] for layer in self.layers]

    def resident_bytes(self, tokens: int, slack: int = 0) -> int:
        """Stored KV bytes after `tokens` tokens when sliding layers keep `window - 1 + slack` rows (at most)."""
        rows = [tokens if w <= 0 else min(tokens, w - 1 + slack) for w in self.input_windows()]
        return sum(self.heads * w * d.itemsize * r for w, d, r in zip(self.widths, self.dtypes, rows, strict=True))

    def dequantized_keys(self, arrays: dict[str, np.ndarray], layer: int) -> np.ndarray:
        """Float keys [..., key_dim] of one layer from its stored tensors (in the rotated space if rotated)."""
        parts = [arrays[name] for name in self.key_slots[layer]]
        return dequantize(parts, self.kv_dtype, self.key_dim, self.key_group)
