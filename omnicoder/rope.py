"""Rotary position embedding with scaling (none / linear / yarn / llama3 / longrope), full or partial.

cos/sin are computed from absolute positions at run time (no position table), so a runtime that evicts
tokens from its cache, or decodes past the trained context, still rotates every token correctly. A layer rotates
the first `dim` dimensions of each head (partial rotary when dim < head_dim, rotate-half within them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnicoder.config import RopeScaling


def _yarn_inv_freq(base: float, dim: int, s: RopeScaling) -> tuple[torch.Tensor, float]:
    def correction_dim(rotations: float) -> float:
        return dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(s.beta_fast)), 0)
    high = min(math.ceil(correction_dim(s.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 where rotations are fast (keep), 0 where slow (interpolate)
    inv_freq = (1 / (s.factor * pos_freqs)) * (1 - extrapolate) + (1 / pos_freqs) * extrapolate
    return inv_freq, s.attention_factor or 0.1 * math.log(s.factor) + 1.0


def _llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    old_len = s.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / s.low_freq_factor, old_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def longrope_attention_factor(s: RopeScaling, max_seq_len: int) -> float:
    """cos/sin multiplier of longrope: attention_factor, else derived from max_seq_len / original context."""
    if s.attention_factor > 0:
        return s.attention_factor
    factor = max_seq_len / s.original_max_position_embeddings
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(s.original_max_position_embeddings))


def rope_frequencies(base: float, dim: int, scaling: RopeScaling) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the attention scale that multiplies cos/sin."""
    if scaling.type == "yarn":
        inv_freq, mscale = _yarn_inv_freq(base, dim, scaling)
        return inv_freq.float(), mscale
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if scaling.type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    return inv_freq.float(), 1.0


class RotaryEmbedding(nn.Module):
    """Maps absolute positions [B, T] to (cos, sin) [B, T, dim] in the rotate-half layout."""

    def __init__(self, dim: int, base: float, scaling: RopeScaling) -> None:
        super().__init__()
        inv_freq, self.mscale = rope_frequencies(base, dim, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        """The inverse frequencies (dim/2,) used for this call's positions."""
        return self.inv_freq

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.frequencies(positions)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.mscale, emb.sin() * self.mscale


class LongRopeEmbedding(RotaryEmbedding):
    """longrope (Phi-3.5 / Phi-4-mini): frequencies divided by short_factor while the call's largest position + 1 is
    within the original context, else by long_factor (transformers' dynamic rule; a graph selects with Where)."""

    def __init__(self, dim: int, base: float, scaling: RopeScaling, max_seq_len: int) -> None:
        super().__init__(dim, base, RopeScaling())
        plain = self.inv_freq.double()
        self.original = scaling.original_max_position_embeddings
        short = plain / torch.tensor(scaling.short_factor, dtype=torch.float64)
        self.inv_freq = short.float()
        self.register_buffer(
            "long_inv_freq", (plain / torch.tensor(scaling.long_factor, dtype=torch.float64)).float(), persistent=False
        )
        self.mscale = longrope_attention_factor(scaling, max_seq_len)

    def frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        beyond = positions.max() + 1 > self.original
        return torch.where(beyond, self.long_inv_freq, self.inv_freq)


def make_rotary(dim: int, base: float, scaling: RopeScaling, max_seq_len: int) -> RotaryEmbedding:
    """The rotary embedding for `scaling` (longrope needs the context length for its derived attention factor)."""
    if scaling.type == "longrope":
        return LongRopeEmbedding(dim, base, scaling, max_seq_len)
    return RotaryEmbedding(dim, base, scaling)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by per-token angles; cos/sin are [B, T, dim] with dim <= D (the first dim rotate)."""
    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :dim], cos, sin), x[..., dim:]), dim=-1)
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
