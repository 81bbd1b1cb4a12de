"""The one attention boundary: each layer's KV cache is a slot that stores the step's new entries and attends.

The attention modules call `slot.attend(q, k, v, spec)` (GQA) or `slot.attend_latent(q, row, latent_dim, spec)`
(MLA, absorbed form) and never look past it; `spec` is the layer's `AttentionSpec(scale, window, softcap)`. The slot
decides where the cache lives and how attention lowers, so a target changes the slot class, never the network:

- `PastKV` (eager, the default): the past (key, value) tensors, concatenated with the new ones, reference math.
  The model wraps a plain (key, value) tuple or None in it (`as_slot`), so eager callers pass tuples.
- `CustomOpKV`: the same as single `torch.ops.omnicoder.*` nodes, which the ONNX exporter translates.
- `static_kv.StaticKVSlot`: a fixed-capacity cache inside the program (ExecuTorch buffers, Core ML states).
- `kv_quant.QuantizedKVSlot`: the past in quantized form, attended with the slot class's `sdpa` kernel.
- Exporters add their own: Core ML's `IOKVSlot` (grouped SDPA), ExecuTorch's `IOKVSlot` (llama::custom_sdpa).
"""

from __future__ import annotations

import torch

from omnicoder import ops
from omnicoder.ops import AttentionSpec

__all__ = ["AttentionSpec", "CustomOpKV", "KVSlot", "LayerKV", "PastKV", "as_slot"]

LayerKV = tuple[torch.Tensor, torch.Tensor]


class KVSlot:
    """One layer's KV cache as the attention modules see it."""

    @staticmethod
    def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
        """Causal attention of the newest q over assembled keys/values (bottom-right aligned)."""
        return ops.attention(q, keys, values, spec)

    def attend(self, q, k, v, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GQA: store the new keys/values [B, Hkv, T, D]; attend q [B, Hq, T, D] over all. -> (out, keys, values)."""
        raise NotImplementedError

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """MLA: store the new latent rows; attend with V = rows[..., :latent_dim]. -> (out, rows)."""
        raise NotImplementedError

    def rows(self, row: torch.Tensor) -> torch.Tensor:
        """MLA's naive (expanded) form: store the new rows and return all of them (eager slots only)."""
        raise NotImplementedError(f"{type(self).__name__} serves the absorbed MLA form only")


class PastKV(KVSlot):
    """The eager slot: the past (key, value) tensors [B, H, P, D] (or None), extended by concatenation and
    attended with `sdpa`. Subclasses for KV-in/KV-out programs change `extend` and `sdpa`."""

    def __init__(self, past: LayerKV | None = None) -> None:
        self.key, self.value = (None, None) if past is None else past

    @staticmethod
    def extend(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return ops.kv_update(past, new)

    def attend(self, q, k, v, spec: AttentionSpec):
        keys, values = self.extend(self.key, k), self.extend(self.value, v)
        return self.sdpa(q, keys, values, spec), keys, values

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        rows = self.rows(row)
        return self.sdpa(q, rows, rows[..., :latent_dim], spec), rows

    def rows(self, row: torch.Tensor) -> torch.Tensor:
        return self.extend(self.key, row)


class CustomOpKV(PastKV):
    """PastKV whose attention is one `torch.ops.omnicoder.*` node (what the ONNX exporter translates); the mask
    comes from `ops.causal_mask` here, so the graph computes it as the other targets do."""

    @staticmethod
    def sdpa(q, keys, values, spec: AttentionSpec) -> torch.Tensor:
        mask = ops.newest_mask(q.shape[2], keys.shape[2], spec.window, q.device)
        return torch.ops.omnicoder.masked_attention(q, keys, values, mask, spec.scale, spec.softcap)

    def attend(self, q, k, v, spec: AttentionSpec):
        past_k, past_v = (k[:, :, :0], v[:, :, :0]) if self.key is None else (self.key, self.value)
        total = past_k.shape[2] + k.shape[2]
        mask = ops.newest_mask(q.shape[2], total, spec.window, q.device) if spec.window > 0 else None
        scale, window, softcap = spec
        return torch.ops.omnicoder.cached_attention(q, k, v, past_k, past_v, mask, scale, window, softcap)

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        past_rows = row[:, :, :0] if self.key is None else self.key
        mask = ops.newest_mask(q.shape[2], past_rows.shape[2] + row.shape[2], spec.window, q.device)
        return torch.ops.omnicoder.latent_attention(q, row, past_rows, mask, latent_dim, spec.scale, spec.softcap)


def as_slot(past: KVSlot | LayerKV | None) -> KVSlot:
    """A layer's `past` as a slot: slots pass through, (key, value) tuples and None become PastKV."""
    return past if isinstance(past, KVSlot) else PastKV(past)
