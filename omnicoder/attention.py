"""The two attention kinds behind one interface.

Both take the layer input x [B, T, d], the rotary (cos, sin) of the T new tokens (None: a NoPE layer) and the
layer's KV slot (`omnicoder.kv_slot`: the one attention boundary), and return an `AttentionResult`: the output
[B, T, d], the new entry for the T tokens, the present entry for past + new tokens as the slot produced it, and the
queries in the cached keys' space (what a runtime scores KV pages with, Quest-style). Each module is built for one
layer and hands the slot that layer's `AttentionSpec` (scale, window, soft-cap) on every call.

- GQA caches key [B, n_kv_heads, T, head_dim] and value of the same shape.
- MLA caches one row per token: key = [latent (kv_latent_dim) | rotated RoPE key (rope_head_dim)] as
  [B, 1, T, kv_latent_dim + rope_head_dim]; the value slot is empty [B, 1, T, 0], since values are
  the latent part of the key row (the absorbed form attends with V = K[..., :kv_latent_dim]).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from omnicoder import ops
from omnicoder.config import OmniCoderConfig
from omnicoder.kv_slot import AttentionSpec, KVSlot, LayerKV
from omnicoder.layers import RMSNorm
from omnicoder.rope import apply_rope

Rotary = tuple[torch.Tensor, torch.Tensor]


def layer_spec(config: OmniCoderConfig, layer: int) -> AttentionSpec:
    """The attention settings of layer `layer`: softmax scale, its sliding window (0: full), logit soft-cap."""
    return AttentionSpec(config.softmax_scale, config.layer_window(layer), config.attn_logit_softcap)


def rotate(x: torch.Tensor, rotary: Rotary | None) -> torch.Tensor:
    """x rotated by `rotary`, or x itself for a NoPE layer (None)."""
    return x if rotary is None else apply_rope(x, *rotary)


class AttentionResult(NamedTuple):
    out: torch.Tensor  # [B, T, d]
    new: LayerKV  # the T new tokens' cache entries
    present: LayerKV  # past + new entries
    query: torch.Tensor  # [B, Hq, T, key width]: queries against the cached key rows


class GroupedQueryAttention(nn.Module):
    """GQA with optional q/k RMSNorm: per head over head_dim ("head" scope) or over the whole q and k projections
    before the split into heads ("projection" scope, OLMo 2)."""

    def __init__(self, config: OmniCoderConfig, layer: int = 0) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.spec = layer_spec(c, layer)
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.norm_projection = c.qk_norm_scope == "projection"
        q_width, k_width = (
            (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim) if self.norm_projection else (c.head_dim,) * 2
        )
        self.q_norm = RMSNorm(q_width, c.norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(k_width, c.norm_eps) if c.qk_norm else None

    def forward(self, x: torch.Tensor, rotary: Rotary | None, slot: KVSlot) -> AttentionResult:
        b, t, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if self.q_norm is not None and self.norm_projection:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and not self.norm_projection:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, rotary), rotate(k, rotary)
        out, keys, values = slot.attend(q, k, v, self.spec)
        return AttentionResult(self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v), (keys, values), q)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 style) with a decoupled RoPE key.

    Per head h: k_h = [W_uk[h] c | k_rope], v_h = W_uv[h] c, where c = norm(W_dkv x) is the shared
    latent and k_rope a single rotated key shared by all heads. `absorbed=True` (the decode form) folds
    W_uk into the query and W_uv into the output, so attention runs directly over the cached latent as
    one KV head; `absorbed=False` expands per-head keys and values (the naive form). Both are equal.
    """

    def __init__(self, config: OmniCoderConfig, layer: int = 0, absorbed: bool = True) -> None:
        super().__init__()
        c = config
        self.n_heads, self.head_dim = c.n_heads, c.head_dim
        self.latent_dim, self.rope_dim = c.kv_latent_dim, c.rope_head_dim
        self.spec = layer_spec(c, layer)
        self.absorbed = absorbed
        self.q_proj = nn.Linear(c.d_model, c.n_heads * (c.head_dim + c.rope_head_dim), bias=False)
        self.kv_down = nn.Linear(c.d_model, c.kv_latent_dim + c.rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(c.kv_latent_dim, c.norm_eps)
        scale = 1.0 / math.sqrt(c.kv_latent_dim)
        self.k_up = nn.Parameter(torch.randn(c.n_heads, c.head_dim, c.kv_latent_dim) * scale)
        self.v_up = nn.Parameter(torch.randn(c.n_heads, c.head_dim, c.kv_latent_dim) * scale)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def forward(self, x: torch.Tensor, rotary: Rotary | None, slot: KVSlot) -> AttentionResult:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split((self.head_dim, self.rope_dim), dim=-1)
        q_rope = rotate(q_rope, rotary)
        latent, k_rope = self.kv_down(x).split((self.latent_dim, self.rope_dim), dim=-1)
        k_rope = rotate(k_rope.unsqueeze(1), rotary)
        row = torch.cat((self.kv_norm(latent).unsqueeze(1), k_rope), dim=-1)  # [B, 1, T, dl + dr]
        # the absorbed query [W_uk-absorbed query | rotated RoPE query] attends over the latent rows
        query = torch.cat((torch.einsum("bhtd,hdc->bhtc", q_nope, self.k_up), q_rope), dim=-1)
        if self.absorbed:
            ctx_latent, rows = slot.attend_latent(query, row, self.latent_dim, self.spec)
            out = torch.einsum("bhtc,hdc->bhtd", ctx_latent, self.v_up)
        else:
            rows = slot.rows(row)
            out = self._naive(q_nope, q_rope, rows)
        out = self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        empty = row[..., :0]  # MLA has no value tensors
        return AttentionResult(out, (row, empty), (rows, empty), query)

    def _naive(self, q_nope: torch.Tensor, q_rope: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        latent, k_rope = rows.split((self.latent_dim, self.rope_dim), dim=-1)
        k_nope = torch.einsum("bxsc,hdc->bhsd", latent, self.k_up)
        values = torch.einsum("bxsc,hdc->bhsd", latent, self.v_up)
        keys = torch.cat((k_nope, k_rope.expand(-1, self.n_heads, -1, -1)), dim=-1)
        query = torch.cat((q_nope, q_rope), dim=-1)
        return ops.attention(query, keys, values, self.spec)


def make_attention(config: OmniCoderConfig, layer: int = 0) -> nn.Module:
    """Layer `layer`'s attention module (its AttentionSpec comes from the config's per-layer settings)."""
    return GroupedQueryAttention(config, layer) if config.attention == "gqa" else LatentAttention(config, layer)
