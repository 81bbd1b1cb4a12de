"""KV caches that live inside the exported program (ExecuTorch mutable buffers, Core ML states).

The ONNX graph passes the KV cache in and out as tensors. ExecuTorch's LLM runners and Core ML's
stateful models instead keep a fixed-capacity cache inside the program and write each step's new
keys/values into it at the tokens' absolute positions. `StaticKVSlot` is that cache for one layer, a
`kv_slot.KVSlot` like every other, so the network itself is unchanged. This is the reference implementation
(slice assignment + masked SDPA, which both ExecuTorch and Core ML accept); an exporter may subclass it
to map the update and attention onto its target's fused ops (e.g. `llama::update_cache` +
`llama::custom_sdpa`).

`StaticCacheDecoder` wraps a model with one slot per layer held as registered buffers:
forward(input_ids [1, T], input_pos [T]) -> logits [1, T, V].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.kv_slot import KVSlot
from omnicoder.model import OmniCoder
from omnicoder.ops import AttentionSpec, causal_mask, explicit_attention


class StaticKVSlot(KVSlot):
    """One layer's in-program cache: key [B, H, S, Dk], value [B, H, S, Dv] (None for MLA's latent rows).

    Slot index == absolute position, so positions must stay below the capacity S.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor | None, input_pos: torch.Tensor) -> None:
        self.key, self.value, self.input_pos = key, value, input_pos

    def mask(self, window: int) -> torch.Tensor:
        """[T, S] boolean: query at position p sees slots 0..p (the last `window` of them when window > 0)."""
        return causal_mask(self.input_pos, self.key.shape[2], window)

    def update(self, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Write the new entries [B, H, T, D] at input_pos in place; return the whole cache."""
        cache[:, :, self.input_pos] = new
        return cache

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
        if spec.softcap > 0:
            return explicit_attention(q, k, v, self.mask(spec.window), spec.scale, spec.softcap)
        gqa = q.shape[1] != k.shape[1]
        mask = self.mask(spec.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=spec.scale, enable_gqa=gqa)

    def attend(self, q, k, v, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys, values = self.update(self.key, k), self.update(self.value, v)
        return self.sdpa(q, keys, values, spec), keys, values

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.update(self.key, row)
        return self.sdpa(q, rows, rows[..., :latent_dim], spec), rows


class StaticCacheDecoder(nn.Module):
    """A decode step whose KV cache is a registered buffer per layer (capacity `max_seq_len` tokens)."""

    def __init__(
        self,
        model: OmniCoder,
        max_seq_len: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        slot_class: type[StaticKVSlot] = StaticKVSlot,
    ) -> None:
        super().__init__()
        c = model.config
        self.model, self.max_seq_len, self.slot_class = model, max_seq_len, slot_class
        self.has_values = c.kv_value_dim > 0
        for i in range(c.n_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(batch, c.kv_heads, max_seq_len, c.kv_key_dim, dtype=dtype))
            if self.has_values:
                self.register_buffer(
                    f"v_cache_{i}", torch.zeros(batch, c.kv_heads, max_seq_len, c.kv_value_dim, dtype=dtype)
                )

    def cache_buffers(self) -> list[str]:
        """Names of the KV buffers, in layer order (key before value)."""
        return [name for name, _ in self.named_buffers() if "_cache_" in name and "." not in name]

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        slots = [
            self.slot_class(
                getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}") if self.has_values else None, input_pos
            )
            for i in range(self.model.config.n_layers)
        ]
        positions = input_pos.unsqueeze(0).expand(input_ids.shape[0], -1)
        return self.model(input_ids, positions, slots, heads=False).logits
