"""The OmniCoder decoder: the one definition of the network that generation and every exporter use.

Decode-step API: `model(input_ids [B, T], positions [B, T], past)` where `past` is a list with one
(key, value) cache entry or KV slot (`omnicoder.kv_slot`) per layer, or None; returns `DecoderOutput` with the
logits, the new cache entries for the T tokens only, and the optional head outputs. Positions are absolute token
positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.attention import AttentionResult, make_attention
from omnicoder.config import OmniCoderConfig
from omnicoder.kv_slot import KVSlot, LayerKV, as_slot
from omnicoder.layers import RMSNorm, SwiGLU
from omnicoder.rope import RotaryEmbedding

RETENTION_CLASSES = ("keep", "compress", "drop")


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # [B, T, V]: next token
    new_kv: list[LayerKV]  # per layer, the T new tokens' cache entries
    present_kv: list[LayerKV] | None = None  # per layer, past + new entries (what a decode-step graph returns)
    mtp_logits: torch.Tensor | None = None  # [B, T, n_mtp, V]: tokens t+2 .. t+1+n_mtp
    retention: torch.Tensor | None = None  # [B, T, 3]: keep / compress / drop logits
    hidden: torch.Tensor | None = None  # [B, T, d]: final hidden state (before the final norm)
    queries: list[torch.Tensor] | None = None  # per layer [B, Hq, T, key width]: queries vs the cached keys


class Block(nn.Module):
    def __init__(self, config: OmniCoderConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = make_attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)

    def forward(self, x: torch.Tensor, rotary, slot: KVSlot) -> tuple[torch.Tensor, AttentionResult]:
        attn = self.attn(self.attn_norm(x), rotary, slot)
        x = x + attn.out
        return x + self.mlp(self.mlp_norm(x)), attn


class MTPHead(nn.Module):
    """One multi-token-prediction head: a residual SiLU block on the last hidden state, then the
    shared final norm and LM head (Medusa-style, so each head costs d*d parameters)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.silu(self.proj(h))


class OmniCoder(nn.Module):
    def __init__(self, config: OmniCoderConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        rope_dim = c.head_dim if c.attention == "gqa" else c.rope_head_dim
        self.rotary = RotaryEmbedding(rope_dim, c.rope_theta, c.rope_scaling)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.mtp_heads = nn.ModuleList(MTPHead(c.d_model) for _ in range(c.n_mtp))
        self.retention_head = nn.Linear(c.d_model, len(RETENTION_CLASSES)) if c.retention_head else None
        self.apply(self._init_weights)
        for head in self.mtp_heads:  # start every MTP head as the identity: it predicts what the LM head does
            nn.init.zeros_(head.proj.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def set_mla_absorbed(self, absorbed: bool) -> None:
        """Switch MLA layers between the absorbed (decode) and naive (expanded) forms."""
        for layer in self.layers:
            if hasattr(layer.attn, "absorbed"):
                layer.attn.absorbed = absorbed

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        past: list[LayerKV | KVSlot] | None = None,
        heads: bool = True,
    ) -> DecoderOutput:
        x = self.embed(input_ids)
        rotary = self.rotary(positions)
        results: list[AttentionResult] = []
        for i, layer in enumerate(self.layers):
            x, attn = layer(x, rotary, as_slot(None if past is None else past[i]))
            results.append(attn)
        logits = self.lm_head(self.norm(x))
        out = DecoderOutput(
            logits=logits,
            new_kv=[r.new for r in results],
            present_kv=[r.present for r in results],
            hidden=x,
            queries=[r.query for r in results],
        )
        if heads and len(self.mtp_heads):
            out.mtp_logits = torch.stack([self.lm_head(self.norm(m(x))) for m in self.mtp_heads], dim=2)
        if heads and self.retention_head is not None:
            out.retention = self.retention_head(x)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
