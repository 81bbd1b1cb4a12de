"""Quantized KV cache formats and the decode-step slot that stores them (reference implementation, torch).

Formats (`--kv`), per cached row of width W, cut into groups of `group` values along the row:

- fp32: float32 rows.
- fp16: float16 rows.
- u8: asymmetric 8-bit per token and group: codes uint8 [.., W], `_scale` and `_min` float16 [.., W / group];
  x = code * scale + min.
- nf4: the 16 NormalFloat-4 levels of QLoRA, two codes per byte (low nibble first): codes uint8 [.., W / 2],
  `_scale` float16 [.., W / group] (the group's absmax); x = NF4[code] * scale.

Optionally the rows are rotated by a block Hadamard matrix of size `group` before quantizing (spreads outlier
channels over the group). Attention scores are invariant when the queries get the same rotation, and the
attention output is rotated back, so the rotation is exact without quantization.

`QuantizedKVSlot` is a layer's KV slot (`omnicoder.kv_slot`): it quantizes the new tokens, appends them to the
quantized past, dequantizes everything and attends over the dequantized rows with the `sdpa` kernel it is given
(eager reference, or the exporter's `omnicoder::masked_attention` node). New tokens
attend to their own quantized form too, so prefill in one call or in chunks gives the same result and what
later steps see is what was stored. A runtime keeps only the quantized tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omnicoder.errors import OmniCoderError
from omnicoder.kv_slot import AttentionSpec, KVSlot
from omnicoder.runtimes import kv_format

KV_DTYPES = ("fp32", "fp16", "u8", "nf4")
ROTATIONS = ("none", "hadamard")
# measured on the default model (docs/benchmarks.md): the rotation cuts NF4's loss by a third (+3.3% -> +2.2%)
# and does nothing for u8
DEFAULT_ROTATION = {"fp32": "none", "fp16": "none", "u8": "none", "nf4": "hadamard"}
# QLoRA's NormalFloat-4 levels, defined once in the torch-free runtime (float32 values)
NF4_LEVELS = tuple(float(level) for level in kv_format.NF4_LEVELS)
TINY = 1e-6  # smallest scale stored (keeps all-equal groups finite)


@dataclass(frozen=True)
class KVQuantSpec:
    dtype: str = "fp32"
    group: int = 32
    rotation: str = "none"

    def validate(self) -> KVQuantSpec:
        if self.dtype not in KV_DTYPES:
            raise OmniCoderError(f"--kv {self.dtype} is unknown; use one of {', '.join(KV_DTYPES)}")
        if self.rotation not in ROTATIONS:
            raise OmniCoderError(f"--kv-rotation {self.rotation} is unknown; use one of {', '.join(ROTATIONS)}")
        if self.group < 2 or self.group & (self.group - 1):
            raise OmniCoderError(f"--kv-group {self.group} must be a power of two >= 2")
        if self.rotation != "none" and self.dtype in ("fp32", "fp16"):
            raise OmniCoderError("--kv-rotation only applies to --kv u8 or nf4")
        return self

    @property
    def quantized(self) -> bool:
        return self.dtype in ("u8", "nf4")

    def group_for(self, width: int) -> int:
        """The group used for rows of `width`: the largest power of two <= `group` that divides it."""
        g = kv_format.group_for(width, self.group)
        if g < 2 and self.quantized:
            raise OmniCoderError(f"KV rows of width {width} cannot be cut into groups; use --kv fp16")
        return g

    def components(self, width: int) -> list[tuple[str, str, int]]:
        """(name suffix, numpy dtype, width) of each tensor that stores rows of `width`."""
        return kv_format.components(self.dtype, width, self.group_for(width) if self.quantized else 0)

    def bytes_per_row(self, width: int) -> int:
        sizes = {"float32": 4, "float16": 2, "uint8": 1}
        return sum(sizes[dtype] * w for _, dtype, w in self.components(width))


# ---- quantize / dequantize (last dim = the row) ------------------------------------------------------


def hadamard(n: int, dtype=torch.float32) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [n, n] (symmetric, orthogonal: H @ H = I)."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / math.sqrt(n)


def rotate(x: torch.Tensor, group: int) -> torch.Tensor:
    """Apply the block Hadamard rotation (its own inverse) along the last dim in blocks of `group`."""
    shape = x.shape
    return (x.reshape(*shape[:-1], shape[-1] // group, group) @ hadamard(group, x.dtype)).reshape(shape)


def quantize(x: torch.Tensor, spec: KVQuantSpec) -> list[torch.Tensor]:
    """Rows [..., W] -> the stored tensors (see `KVQuantSpec.components`)."""
    if spec.dtype == "fp32":
        return [x.float()]
    if spec.dtype == "fp16":
        return [x.half()]
    width = x.shape[-1]
    g = spec.group_for(width)
    xg = x.float().reshape(*x.shape[:-1], width // g, g)
    if spec.dtype == "u8":
        lo, hi = xg.amin(-1), xg.amax(-1)
        scale = ((hi - lo) / 255.0).clamp_min(TINY).half()
        low = lo.half()
        codes = torch.round((xg - low.float().unsqueeze(-1)) / scale.float().unsqueeze(-1)).clamp(0, 255)
        return [codes.reshape(x.shape).to(torch.uint8), scale, low]
    scale = xg.abs().amax(-1).clamp_min(TINY).half()
    normed = xg / scale.float().unsqueeze(-1)
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=x.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    index = (normed.unsqueeze(-1) > midpoints).sum(-1).to(torch.int32).reshape(*x.shape[:-1], width // 2, 2)
    packed = (index[..., 0] + index[..., 1] * 16).to(torch.uint8)  # int32 arithmetic: every runtime has it
    return [packed, scale]


def dequantize(parts: list[torch.Tensor], spec: KVQuantSpec, width: int) -> torch.Tensor:
    """The stored tensors -> float32 rows [..., W]."""
    if not spec.quantized:
        return parts[0].float()
    g = spec.group_for(width)
    if spec.dtype == "u8":
        codes, scale, low = parts
        xg = codes.float().reshape(*codes.shape[:-1], width // g, g)
        return (xg * scale.float().unsqueeze(-1) + low.float().unsqueeze(-1)).reshape(*codes.shape[:-1], width)
    packed, scale = parts
    codes = packed.to(torch.int32)
    index = torch.stack((codes % 16, codes // 16), dim=-1).reshape(*packed.shape[:-1], width).long()
    values = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=packed.device)[index]
    xg = values.reshape(*packed.shape[:-1], width // g, g) * scale.float().unsqueeze(-1)
    return xg.reshape(*packed.shape[:-1], width)


# ---- the decode-step slot -------------------------------------------------------------------------------


class QuantizedKVSlot(KVSlot):
    """One layer's past KV in stored (quantized) form; after the step, `present` holds past + new stored tensors.
    `sdpa`: the attention over the dequantized rows (default: the eager reference, `KVSlot.sdpa`)."""

    def __init__(
        self, spec: KVQuantSpec, past_key: list[torch.Tensor], past_value: list[torch.Tensor] | None, sdpa=None
    ) -> None:
        self.spec, self.past_key, self.past_value = spec, past_key, past_value
        self.present: list[list[torch.Tensor]] = []
        if sdpa is not None:
            self.sdpa = sdpa

    def _store(self, past: list[torch.Tensor], new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize new rows, append them; return (dequantized past, dequantized new)."""
        width = new.shape[-1]
        stored = quantize(new, self.spec)
        self.present.append([torch.cat((p, s), dim=2) for p, s in zip(past, stored, strict=True)])
        return dequantize(past, self.spec, width), dequantize(stored, self.spec, width)

    def _rotation(self, width: int) -> int:
        return self.spec.group_for(width) if self.spec.rotation == "hadamard" else 0

    def attend(self, q, k, v, spec: AttentionSpec):
        gk, gv = self._rotation(k.shape[-1]), self._rotation(v.shape[-1])
        if gk:
            q, k = rotate(q, gk), rotate(k, gk)
        if gv:
            v = rotate(v, gv)
        keys = torch.cat(self._store(self.past_key, k), dim=2)
        values = torch.cat(self._store(self.past_value, v), dim=2)
        out = self.sdpa(q, keys, values, spec)
        return (rotate(out, gv) if gv else out), keys, values

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        g = self._rotation(row.shape[-1])
        if g and latent_dim % g:
            raise OmniCoderError(f"--kv-rotation needs the latent width {latent_dim} to be a multiple of {g}")
        if g:
            q, row = rotate(q, g), rotate(row, g)
        rows = torch.cat(self._store(self.past_key, row), dim=2)
        out = self.sdpa(q, rows, rows[..., :latent_dim], spec)
        return (rotate(out, g) if g else out), rows
