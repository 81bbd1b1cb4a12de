"""Fused-op boundaries of the network, each with its reference implementation.

Every exporter maps these calls to its target's fused op (ONNX `Attention` / `GroupQueryAttention`,
Core ML `scaled_dot_product_attention`, ExecuTorch `llama::custom_sdpa` / `llama::update_cache`).
The network calls only these functions for attention and the KV update, so there is one definition of
the model and one place per target that lowers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kv_update(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Append the new tokens' keys or values [B, H, T, D] to the past ones along the sequence axis."""
    if past is None:
        return new
    return torch.cat((past, new), dim=2)


def causal_mask(q_len: int, kv_len: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean [q_len, kv_len] mask, True where attention is allowed.

    Causality is bottom-right aligned: query i (of the q_len newest tokens) sees cache slots
    0 .. kv_len - q_len + i. With `window` > 0 it also sees at most the last `window` slots.
    """
    q_idx = torch.arange(kv_len - q_len, kv_len, device=device).unsqueeze(1)
    k_idx = torch.arange(kv_len, device=device).unsqueeze(0)
    allowed = k_idx <= q_idx
    if window > 0:
        allowed = allowed & (q_idx - k_idx < window)
    return allowed


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0) -> torch.Tensor:
    """Causal attention over the cache: q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv] -> [B, Hq, T, Dv].

    Hq must be a multiple of Hkv (grouped-query attention). The T queries are the newest T of the S
    cache slots (bottom-right causal); `window` > 0 limits each query to the last `window` slots.
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if q_len == 1 and (window <= 0 or kv_len <= window):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if q_len == kv_len and window <= 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    mask = causal_mask(q_len, kv_len, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
