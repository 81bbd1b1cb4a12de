"""The OmniCoder decoder: the one definition of the network that generation and every exporter use.

Decode-step API: `model(input_ids [B, T], positions [B, T], past)` where `past` is a list with one
(key, value) cache entry or KV slot (`omnicoder.kv_slot`) per layer, or None; returns `DecoderOutput` with the
logits, the new cache entries for the T tokens only, and the optional head outputs. Positions are absolute token
positions.

Per-layer settings come from the config: each layer's attention spec (window, scale, soft-cap), which RoPE it
applies (the global one at rope_theta with rope_scaling, the local one at rope_local_theta for sliding layers, none
for NoPE layers), and the block's norm placement ("pre", "sandwich", "post") and residual multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.attention import AttentionResult, make_attention
from omnicoder.config import OmniCoderConfig, RopeScaling
from omnicoder.kv_slot import KVSlot, LayerKV, as_slot
from omnicoder.layers import GatedMLP, RMSNorm
from omnicoder.moe import MoEFeedForward
from omnicoder.rope import RotaryEmbedding, make_rotary

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


def _norm(config: OmniCoderConfig, present: bool) -> RMSNorm | None:
    return RMSNorm(config.d_model, config.norm_eps) if present else None


def _apply(norm: RMSNorm | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


class Block(nn.Module):
    """One decoder layer. Norms by placement: "pre" attn_norm / mlp_norm on the sublayer inputs; "sandwich" those
    plus attn_post_norm / mlp_post_norm on the sublayer outputs; "post" the output norms only. The sublayer output
    is scaled by residual_multiplier (when not 1) before it joins the residual stream. The feed-forward `mlp` is a
    GatedMLP, or a MoEFeedForward on the layers config.is_moe_layer names."""

    def __init__(self, config: OmniCoderConfig, layer: int = 0) -> None:
        super().__init__()
        c = config
        self.attn_norm = _norm(c, c.norm_placement != "post")
        self.attn = make_attention(c, layer)
        self.attn_post_norm = _norm(c, c.norm_placement != "pre")
        self.mlp_norm = _norm(c, c.norm_placement != "post")
        # the feed-forward: the sparse MoE one (omnicoder.moe) on MoE layers, the dense gated MLP otherwise
        self.mlp = MoEFeedForward(c) if c.is_moe_layer(layer) else GatedMLP(c.d_model, c.mlp_hidden, c.mlp_activation)
        self.mlp_post_norm = _norm(c, c.norm_placement != "pre")
        self.residual_multiplier = c.residual_multiplier

    def _residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return x + (out if self.residual_multiplier == 1.0 else out * self.residual_multiplier)

    def forward(self, x: torch.Tensor, rotary, slot: KVSlot) -> tuple[torch.Tensor, AttentionResult]:
        attn = self.attn(_apply(self.attn_norm, x), rotary, slot)
        x = self._residual(x, _apply(self.attn_post_norm, attn.out))
        return self._residual(x, _apply(self.mlp_post_norm, self.mlp(_apply(self.mlp_norm, x)))), attn


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
        self.rotary = make_rotary(c.rope_dim, c.rope_theta, c.rope_scaling, c.max_seq_len)
        local = c.rope_local_theta > 0 and any(c.uses_local_rope(i) for i in range(c.n_layers))
        self.local_rotary = RotaryEmbedding(c.rope_dim, c.rope_local_theta, RopeScaling()) if local else None
        self.layers = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
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
        c = self.config
        x = self.embed(input_ids)
        if c.embedding_multiplier != 1.0:  # Gemma: sqrt(d_model) in the model dtype, as transformers does
            x = x * torch.tensor(c.embedding_multiplier, dtype=x.dtype)
        rotary = self.rotary(positions)
        local = None if self.local_rotary is None else self.local_rotary(positions)
        results: list[AttentionResult] = []
        for i, layer in enumerate(self.layers):
            layer_rotary = None if not c.uses_rope(i) else local if c.uses_local_rope(i) else rotary
            x, attn = layer(x, layer_rotary, as_slot(None if past is None else past[i]))
            results.append(attn)
        logits = self.head(x)
        out = DecoderOutput(
            logits=logits,
            new_kv=[r.new for r in results],
            present_kv=[r.present for r in results],
            hidden=x,
            queries=[r.query for r in results],
        )
        if heads and len(self.mtp_heads):
            out.mtp_logits = torch.stack([self.head(m(x)) for m in self.mtp_heads], dim=2)
        if heads and self.retention_head is not None:
            out.retention = self.retention_head(x)
        return out

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head, logit multiplier and final soft-cap: hidden [.., d] -> logits [.., V]."""
        c = self.config
        logits = self.lm_head(self.norm(hidden))
        if c.logit_multiplier != 1.0:
            logits = logits * c.logit_multiplier
        if c.final_logit_softcap > 0:
            logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
