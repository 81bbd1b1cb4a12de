"""The PyTorch modules that `omnicoder-export --target executorch` traces into a .pte program.

- `--kv buffer` (ExecuTorch's own LLM convention): `ExecuTorchCacheDecoder.forward(tokens [1, T], input_pos [1])
  -> logits [1, T, V]`, where input_pos holds the absolute position of the first token. The KV cache is one
  mutable buffer per layer and kind (k_cache_{i} / v_cache_{i}) in ExecuTorch's [B, S, H, D] layout, written
  by `llama::update_cache` and read by `llama::custom_sdpa` (`FusedKVSlot`). MLA caches one latent row per
  token (key buffers only); custom_sdpa needs V as wide as K, so it attends with V = the whole row and keeps
  the first kv_latent_dim output columns (exact: those columns are the latent part).
  `--attention reference` keeps `static_kv.StaticKVSlot` (slice assignment + masked SDPA, decomposed).
- `--kv io`: `omnicoder.decode_step.DecodeStep` (explicit past/present KV tensors, the I/O contract of
  `omnicoder.io_contract`) with `IOKVSlot`: attention on `llama::custom_sdpa` (fused) or plain masked SDPA
  (reference).
- Soft-capped layers (Gemma 2) attend with the written-out form (`ops.explicit_attention`): custom_sdpa has no cap.
- `delegable_norms`: every RMSNorm and gated MLP in its XNNPACK-delegable form while tracing (`omnicoder.layers`:
  RMSNorm's mean as a linear layer, tanh-GELU written out since XNNPACK runs aten.gelu(tanh) as erf-GELU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.decode_step import DecodeStep
from omnicoder.kv_slot import AttentionSpec, PastKV
from omnicoder.layers import GatedMLP, RMSNorm
from omnicoder.model import OmniCoder
from omnicoder.ops import causal_mask, explicit_attention, newest_mask
from omnicoder.static_kv import StaticCacheDecoder, StaticKVSlot

ATTENTION_MODES = ("fused", "reference")


def load_custom_ops() -> None:
    """Register ExecuTorch's llama:: custom ops (update_cache, custom_sdpa) with torch."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def float_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean [T, S] -> additive float mask (custom_sdpa takes float masks only)."""
    return torch.where(allowed, 0.0, float("-inf")).to(torch.float32)


@contextlib.contextmanager
def delegable_norms(model: nn.Module) -> Iterator[int]:
    """Switch every RMSNorm and gated MLP to its XNNPACK-delegable form while tracing; back afterwards. Yields the
    number of norms."""
    modules = [m for m in model.modules() if isinstance(m, RMSNorm | GatedMLP)]
    norms = [m for m in modules if isinstance(m, RMSNorm)]
    for module in modules:
        module.delegable(True)
    try:
        yield len(norms)
    finally:
        for module in modules:
            module.delegable(False)


class FusedKVSlot(StaticKVSlot):
    """One layer's cache in ExecuTorch's layout: key [B, S, H, Dk], value [B, S, H, Dv] (None for MLA).

    Positions of one call are contiguous from `start` (what `llama::update_cache` writes). Causal attention
    uses custom_sdpa's start_pos; a sliding window passes an explicit [T, S] mask instead.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor | None, input_pos: torch.Tensor, start) -> None:
        super().__init__(key, value, input_pos)
        self.start = start

    def mask(self, window: int) -> torch.Tensor:
        return causal_mask(self.input_pos, self.key.shape[1], window)

    def fused_sdpa(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, spec: AttentionSpec):
        """q [B, Hq, T, D] over the caches [B, S, H, D*] -> [B, Hq, T, Dv]."""
        scale, window, softcap = spec
        if softcap > 0:
            bhsd = (keys.transpose(1, 2), values.transpose(1, 2))
            return explicit_attention(q, *bhsd, self.mask(window), scale, softcap)
        q = q.transpose(1, 2).contiguous()
        if window > 0:
            out = torch.ops.llama.custom_sdpa(q, keys, values, 0, float_mask(self.mask(window)), 0.0, False, scale)
        else:
            out = torch.ops.llama.custom_sdpa(q, keys, values, self.start, None, 0.0, True, scale)
        return out.transpose(1, 2)

    def write(self, cache: torch.Tensor, new: torch.Tensor) -> None:
        torch.ops.llama.update_cache(new.transpose(1, 2).contiguous(), cache, self.start)

    def attend(self, q, k, v, spec: AttentionSpec):
        self.write(self.key, k)
        self.write(self.value, v)
        return self.fused_sdpa(q, self.key, self.value, spec), self.key, self.value

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        self.write(self.key, row)
        out = self.fused_sdpa(q, self.key, self.key, spec)
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


# ---- --kv io ----------------------------------------------------------------------------------------------


def _sdpa_any(q, keys, values, past_len, spec: AttentionSpec, fused: bool):
    """Causal attention of the T newest queries over keys/values [B, H, P + T, D] (bottom-right aligned)."""
    scale, window, softcap = spec
    mask = None
    if window > 0 or not fused or softcap > 0:
        mask = newest_mask(q.shape[2], keys.shape[2], window, q.device)
    if softcap > 0:
        return explicit_attention(q, keys, values, mask, scale, softcap)
    if fused:
        bshd = [t.transpose(1, 2).contiguous() for t in (q, keys, values)]
        if window > 0:
            out = torch.ops.llama.custom_sdpa(*bshd, 0, float_mask(mask), 0.0, False, scale)
        else:
            out = torch.ops.llama.custom_sdpa(*bshd, past_len, None, 0.0, True, scale)
        return out.transpose(1, 2)
    gqa = q.shape[1] != keys.shape[1]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)


class IOKVSlot(PastKV):
    """`--kv io`: the past KV tensors, always concatenated with the new ones (no Python branch on the symbolic past
    length, so batch, sequence and past stay dynamic), attended by `llama::custom_sdpa` (fused) or masked SDPA."""

    fused = True

    @staticmethod
    def extend(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.cat((past, new), dim=2)

    def sdpa(self, q, keys, values, spec: AttentionSpec) -> torch.Tensor:
        return _sdpa_any(q, keys, values, self.key.shape[2], spec, self.fused)

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        rows = self.rows(row)
        if self.fused:  # custom_sdpa needs V as wide as K: attend with the whole rows, keep the latent columns
            return self.sdpa(q, rows, rows, spec)[..., :latent_dim], rows
        return self.sdpa(q, rows, rows[..., :latent_dim], spec), rows


class ReferenceIOKVSlot(IOKVSlot):
    fused = False


class IOStep(nn.Module):
    """`DecodeStep` with a flat argument list (ExecuTorch methods take tensors, not lists)."""

    def __init__(self, model: OmniCoder, attention: str = "fused") -> None:
        super().__init__()
        self.step = DecodeStep(model, slot_class=IOKVSlot if attention == "fused" else ReferenceIOKVSlot)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        return self.step(input_ids, position_ids, list(past))
