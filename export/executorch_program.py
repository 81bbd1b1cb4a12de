"""The PyTorch modules that `omnicoder-export --target executorch` traces into a .pte program.

- `--kv buffer` (ExecuTorch's own LLM convention): `ExecuTorchCacheDecoder.forward(tokens [1, T], input_pos [1])
  -> logits [1, T, V]`, where input_pos holds the absolute position of the first token. The KV cache is one
  mutable buffer per layer and kind (k_cache_{i} / v_cache_{i}) in ExecuTorch's [B, S, H, D] layout, written
  by `llama::update_cache` and read by `llama::custom_sdpa` (`FusedKVSlot`). MLA caches one latent row per
  token (key buffers only); custom_sdpa needs V as wide as K, so it attends with V = the whole row and keeps
  the first kv_latent_dim output columns (exact: those columns are the latent part).
  `--attention reference` keeps `static_kv.StaticKVSlot` (slice assignment + masked SDPA, decomposed).
- `--kv io`: `export.onnx_graph.DecodeStep` (explicit past/present KV tensors, the ONNX contract); its
  `omnicoder::cached_attention` / `latent_attention` boundaries are decomposed by `io_decompositions`,
  onto `llama::custom_sdpa` (fused) or plain masked SDPA (reference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.layers import RMSNorm
from omnicoder.model import OmniCoder
from omnicoder.static_kv import StaticCacheDecoder, StaticKVSlot

ATTENTION_MODES = ("fused", "reference")


def load_custom_ops() -> None:
    """Register ExecuTorch's llama:: custom ops (update_cache, custom_sdpa) with torch."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def float_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean [T, S] -> additive float mask (custom_sdpa takes float masks only)."""
    return torch.where(allowed, 0.0, float("-inf")).to(torch.float32)


class DelegatedRMSNorm(nn.Module):
    """RMSNorm as ops XNNPACK delegates: the mean of squares as a linear layer against 1/d.

    F.rms_norm decomposes into mean.dim over the last axis, which XNNPACK takes only for 4-D tensors
    (global average pooling), so each norm would split the delegate. Same math, fp32.
    """

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        dim = norm.weight.shape[0]
        self.weight = norm.weight
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim), persistent=False)
        self.register_buffer("eps", torch.tensor([norm.eps]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(F.linear(x * x, self.average) + self.eps) * self.weight


@contextlib.contextmanager
def delegated_norms(model: nn.Module) -> Iterator[int]:
    """Swap every RMSNorm for DelegatedRMSNorm while tracing; restore them afterwards. Yields the count."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, RMSNorm):
                setattr(parent, name, DelegatedRMSNorm(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class FusedKVSlot(StaticKVSlot):
    """One layer's cache in ExecuTorch's layout: key [B, S, H, Dk], value [B, S, H, Dv] (None for MLA).

    Positions of one call are contiguous from `start` (what `llama::update_cache` writes). Causal attention
    uses custom_sdpa's start_pos; a sliding window passes an explicit [T, S] mask instead.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor | None, input_pos: torch.Tensor, start) -> None:
        super().__init__(key, value, input_pos)
        self.start = start

    def mask(self, window: int) -> torch.Tensor:
        slots = torch.arange(self.key.shape[1], device=self.key.device).unsqueeze(0)
        pos = self.input_pos.unsqueeze(1)
        return (slots <= pos) & (pos - slots < window)

    def fused_sdpa(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, window: int):
        """q [B, Hq, T, D] over the caches -> [B, Hq, T, Dv]."""
        q = q.transpose(1, 2).contiguous()
        if window > 0:
            out = torch.ops.llama.custom_sdpa(q, keys, values, 0, float_mask(self.mask(window)), 0.0, False, scale)
        else:
            out = torch.ops.llama.custom_sdpa(q, keys, values, self.start, None, 0.0, True, scale)
        return out.transpose(1, 2)

    def write(self, cache: torch.Tensor, new: torch.Tensor) -> None:
        torch.ops.llama.update_cache(new.transpose(1, 2).contiguous(), cache, self.start)

    def attend(self, q, k, v, scale: float, window: int):
        self.write(self.key, k)
        self.write(self.value, v)
        return self.fused_sdpa(q, self.key, self.value, scale, window), self.key, self.value

    def attend_latent(self, q, row, latent_dim: int, scale: float, window: int):
        self.write(self.key, row)
        out = self.fused_sdpa(q, self.key, self.key, scale, window)
        return out[..., :latent_dim], self.key


class ExecuTorchCacheDecoder(StaticCacheDecoder):
    """forward(tokens [1, T], input_pos [1] = first position) -> logits [1, T, V], KV in mutable buffers."""

    def __init__(self, model: OmniCoder, max_seq_len: int, attention: str = "fused") -> None:
        super().__init__(model, max_seq_len)
        self.attention = attention
        if attention == "fused":  # ExecuTorch's [B, S, H, D] layout for llama::update_cache / custom_sdpa
            for name in self.cache_buffers():
                b, h, s, d = getattr(self, name).shape
                self.register_buffer(name, torch.zeros(b, s, h, d))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start < self.max_seq_len)
        torch._check(start + tokens.shape[1] <= self.max_seq_len)
        positions = torch.arange(tokens.shape[1], device=tokens.device) + start
        slots = [self._slot(i, positions, start) for i in range(self.model.config.n_layers)]
        return self.model(tokens, positions.unsqueeze(0), slots, heads=False).logits

    def _slot(self, layer: int, positions: torch.Tensor, start) -> StaticKVSlot:
        key = getattr(self, f"k_cache_{layer}")
        value = getattr(self, f"v_cache_{layer}") if self.has_values else None
        if self.attention == "fused":
            return FusedKVSlot(key, value, positions, start)
        return StaticKVSlot(key, value, positions)


# ---- --kv io: decompositions of the omnicoder:: attention boundaries ---------------------------------


def _bottom_right_mask(q_len, kv_len, window: int, device) -> torch.Tensor:
    q_idx = (torch.arange(q_len, device=device) + (kv_len - q_len)).unsqueeze(1)
    k_idx = torch.arange(kv_len, device=device).unsqueeze(0)
    allowed = k_idx <= q_idx
    if window > 0:
        allowed = allowed & (q_idx - k_idx < window)
    return allowed


def _sdpa_any(q, keys, values, past_len, scale: float, window: int, fused: bool):
    """Causal attention of the T newest queries over keys/values [B, H, P + T, D] (bottom-right aligned)."""
    if fused:
        bshd = [t.transpose(1, 2).contiguous() for t in (q, keys, values)]
        if window > 0:
            mask = float_mask(_bottom_right_mask(q.shape[2], keys.shape[2], window, q.device))
            out = torch.ops.llama.custom_sdpa(*bshd, 0, mask, 0.0, False, scale)
        else:
            out = torch.ops.llama.custom_sdpa(*bshd, past_len, None, 0.0, True, scale)
        return out.transpose(1, 2)
    mask = _bottom_right_mask(q.shape[2], keys.shape[2], window, q.device)
    gqa = q.shape[1] != keys.shape[1]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)


def io_decompositions(attention: str) -> dict:
    """run_decompositions table: omnicoder:: attention nodes -> ExecuTorch-runnable ops (no Python branches
    on symbolic sizes, so batch, sequence and past stay dynamic)."""
    fused = attention == "fused"

    def cached_attention(q, k, v, past_k, past_v, scale: float, window: int):
        keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        return _sdpa_any(q, keys, values, past_k.shape[2], scale, window, fused), keys, values

    def latent_attention(q, row, past_rows, latent_dim: int, scale: float, window: int):
        rows = torch.cat((past_rows, row), dim=2)
        if fused:  # custom_sdpa needs V as wide as K: attend with the whole rows, keep the latent columns
            out = _sdpa_any(q, rows, rows, past_rows.shape[2], scale, window, True)[..., :latent_dim]
        else:
            out = _sdpa_any(q, rows, rows[..., :latent_dim], past_rows.shape[2], scale, window, False)
        return out, rows

    return {
        torch.ops.omnicoder.cached_attention.default: cached_attention,
        torch.ops.omnicoder.latent_attention.default: latent_attention,
    }


class IOStep(nn.Module):
    """`DecodeStep` with a flat argument list (ExecuTorch methods take tensors, not lists)."""

    def __init__(self, model: OmniCoder) -> None:
        super().__init__()
        from omnicoder.export.onnx_graph import DecodeStep

        self.step = DecodeStep(model)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        return self.step(input_ids, position_ids, list(past))
