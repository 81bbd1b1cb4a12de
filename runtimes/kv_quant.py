"""numpy mirror of `omnicoder.kv_quant` (torch-free): dequantize stored KV rows, rotate queries.

The exported graph quantizes new tokens itself; a runtime only needs to read stored rows back when it
inspects them (Quest page summaries, tests). Formats are described by the manifest's `graph.kv.storage`.
"""

from __future__ import annotations

import numpy as np

# QLoRA's NormalFloat-4 levels (Dettmers et al. 2023, appendix E); omnicoder.kv_quant uses these too
NF4_LEVELS = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171066284,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)


def dequantize(parts: list[np.ndarray], dtype: str, width: int, group: int | None) -> np.ndarray:
    """Stored tensors of rows [..., *] -> float32 rows [..., width] (dtype: fp32 | fp16 | u8 | nf4)."""
    if dtype in ("fp32", "fp16"):
        return parts[0].astype(np.float32)
    lead = parts[0].shape[:-1]
    scale = parts[1].astype(np.float32)[..., None]
    if dtype == "u8":
        codes = parts[0].astype(np.float32).reshape(*lead, width // group, group)
        return (codes * scale + parts[2].astype(np.float32)[..., None]).reshape(*lead, width)
    packed = parts[0]
    index = np.stack((packed & 15, packed >> 4), axis=-1).reshape(*lead, width)
    values = NF4_LEVELS[index].reshape(*lead, width // group, group)
    return (values * scale).reshape(*lead, width)


def hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n, dtype=np.float32)


def rotate(x: np.ndarray, group: int) -> np.ndarray:
    """The block Hadamard rotation of the rows (its own inverse)."""
    shape = x.shape
    return (x.reshape(*shape[:-1], shape[-1] // group, group) @ hadamard(group)).reshape(shape)
