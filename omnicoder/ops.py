"""The network's fused-op boundaries: reference math, and the same math as single `torch.ops.omnicoder.*` nodes.

Eager PyTorch runs the reference functions. An exporter that wants one graph node per boundary calls the custom
ops instead (through its KV-slot class, `omnicoder.kv_slot`, and `omnicoder.quant.QuantLinearOp`), which
`torch.export` keeps whole, and translates each to its target's fused op:

- cached_attention (attention + KV update): ONNX `Attention` with past/present KV inputs (or
  `com.microsoft.GroupQueryAttention`).
- latent_attention (MLA over its latent cache, V = K[..., :latent]): ONNX Concat + `Attention`.
- masked_attention (attention over a cache the caller assembled, e.g. dequantized KV): ONNX `Attention`
  with an explicit mask.
The attention ops take the slot's `causal_mask` (the one mask every target uses) as an input where they need one
(a sliding window, MLA's rows, an assembled cache), so a graph computes it once, from the same rule, and a layer's
`AttentionSpec` (softmax scale, sliding window, logit soft-cap) as scalar arguments.
- quant_linear / quant_linear_zp: ONNX DequantizeLinear(int4, block 32) + MatMul (ORT fuses it into MatMulNBits),
  or MatMulNBits directly, or int8 dynamic quantization; Core ML `constexpr_blockwise_shift_scale`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class AttentionSpec(NamedTuple):
    """One layer's attention settings, as the attention modules hand them to their KV slot.

    scale: softmax scale of q·k. window: sliding window in tokens (0: full causal attention). softcap: attention
    logit soft-cap, scores = softcap * tanh(scores / softcap) before the mask (Gemma 2; 0: off).
    """

    scale: float
    window: int = 0
    softcap: float = 0.0


# ---- reference implementations ---------------------------------------------------------------------


def kv_update(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Append the new tokens' keys or values [B, H, T, D] to the past ones along the sequence axis."""
    if past is None or past.shape[2] == 0:
        return new
    return torch.cat((past, new), dim=2)


def causal_mask(query_pos: torch.Tensor, n_slots, window: int) -> torch.Tensor:
    """Boolean [T, n_slots], True where attention is allowed: the query at cache slot query_pos[t] sees slots
    0 .. query_pos[t]; with `window` > 0 only the last `window` of them. The one mask every slot and target uses."""
    slots = torch.arange(n_slots, device=query_pos.device).unsqueeze(0)
    pos = query_pos.unsqueeze(1)
    allowed = slots <= pos
    if window > 0:
        allowed = torch.logical_and(allowed, pos - slots < window)  # `&` traces to aten.__and__, Core ML has no such op
    return allowed


def newest_positions(q_len, kv_len, device: torch.device | None = None) -> torch.Tensor:
    """The cache slots of the q_len newest of kv_len entries (bottom-right aligned causality)."""
    return torch.arange(q_len, device=device) + (kv_len - q_len)


def newest_mask(q_len, kv_len, window: int, device: torch.device | None = None) -> torch.Tensor:
    """causal_mask for the q_len newest of kv_len entries (bottom-right aligned)."""
    return causal_mask(newest_positions(q_len, kv_len, device), kv_len, window)


def softcap_scores(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """softcap * tanh(scores / softcap); scores unchanged when softcap is 0."""
    return torch.tanh(scores / softcap) * softcap if softcap > 0 else scores


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    """Attention written out (scores, soft-cap, mask, softmax), for soft-capped layers that SDPA cannot express.

    q [B, Hq, T, D] over k/v [B, Hkv, S, D*] where the bool mask [T, S] allows; the query heads of each KV head
    become extra query rows (no K/V copies)."""
    t, group = q.shape[2], q.shape[1] // k.shape[1]
    queries = q.unflatten(1, (k.shape[1], group)).flatten(2, 3)  # [B, Hkv, G*T, D]
    scores = softcap_scores(queries @ k.transpose(-1, -2) * scale, softcap)
    scores = scores.masked_fill(~allowed.repeat(group, 1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.unflatten(2, (group, t)).flatten(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Causal attention over the cache: q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv] -> [B, Hq, T, Dv].

    Hq must be a multiple of Hkv (grouped-query attention). The T queries are the newest T of the S
    cache slots (bottom-right causal); `spec.window` > 0 limits each query to the last `window` slots; a
    soft-capped layer takes the explicit path, every other one SDPA.
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    scale, window = spec.scale, spec.window
    if spec.softcap > 0:
        return explicit_attention(q, k, v, newest_mask(q_len, kv_len, window, q.device), scale, spec.softcap)
    gqa = q.shape[1] != k.shape[1]
    if q_len == 1 and (window <= 0 or kv_len <= window):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if q_len == kv_len and window <= 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    mask = newest_mask(q_len, kv_len, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def cached_attention(q, k, v, past_k: torch.Tensor | None, past_v: torch.Tensor | None, spec: AttentionSpec):
    """KV update + causal attention: (output, all keys, all values); past_k, past_v may be None."""
    keys, values = kv_update(past_k, k), kv_update(past_v, v)
    return attention(q, keys, values, spec), keys, values


def latent_attention(q, row, past_rows: torch.Tensor | None, latent_dim: int, spec: AttentionSpec):
    """MLA's attention over its latent cache: keys are the rows [B, 1, S, latent | rope], values the rows'
    first `latent_dim` columns. Returns (output [B, H, T, latent_dim], all rows)."""
    rows = kv_update(past_rows, row)
    return attention(q, rows, rows[..., :latent_dim], spec), rows


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """Blockwise dequantization of qweight int8 [N, K] with scales [N, K / block]: symmetric (signed codes) when
    `zero_points` is None, else (unsigned codes - zero point) * scale with float zero points [N, K / block]."""
    n, k = qweight.shape
    block = k // scales.shape[1]
    codes = qweight.to(scales.dtype).view(n, -1, block)
    if zero_points is not None:
        codes = codes - zero_points.to(scales.dtype).unsqueeze(-1)
    return (codes * scales.unsqueeze(-1)).view(n, k)


def quant_linear(x, qweight, scales, bias, bits: int, zero_points=None) -> torch.Tensor:
    """y = x @ dequantize(qweight, scales, zero_points).T + bias, with `bits`-bit codes in blocks (symmetric, or
    asymmetric with zero points)."""
    return F.linear(x, dequantize(qweight, scales, zero_points).to(x.dtype), bias)


# ---- custom ops: the same math as single graph nodes for exporters ---------------------------------


def masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float = 0.0
) -> torch.Tensor:
    """Attention of q [B, Hq, T, D] over k/v [B, Hkv, S, D*] where the bool mask [T, S] allows (GQA when Hq > Hkv)."""
    if softcap > 0:
        return explicit_attention(q, k, v, mask, scale, softcap)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


@torch.library.custom_op("omnicoder::cached_attention", mutates_args=())
def _cached_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    window: int,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mask`: causal_mask's [T, S] for a sliding window (None: plain causal, bottom-right aligned)."""
    out, keys, values = cached_attention(q, k, v, past_k, past_v, AttentionSpec(scale, window, softcap))
    return out, keys.clone(), values.clone()


@_cached_attention_op.register_fake
def _(q, k, v, past_k, past_v, mask, scale, window, softcap):
    keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    return q.new_empty(*q.shape[:3], v.shape[3]), keys, values


@torch.library.custom_op("omnicoder::latent_attention", mutates_args=())
def _latent_attention_op(
    q: torch.Tensor,
    row: torch.Tensor,
    past_rows: torch.Tensor,
    mask: torch.Tensor,
    latent_dim: int,
    scale: float,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = kv_update(past_rows, row)
    return masked_sdpa(q, rows, rows[..., :latent_dim], mask, scale, softcap), rows.clone()


@_latent_attention_op.register_fake
def _(q, row, past_rows, mask, latent_dim, scale, softcap):
    return q.new_empty(*q.shape[:3], latent_dim), torch.cat((past_rows, row), dim=2)


@torch.library.custom_op("omnicoder::masked_attention", mutates_args=())
def _masked_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    return masked_sdpa(q, k, v, mask, scale, softcap)


@_masked_attention_op.register_fake
def _(q, k, v, mask, scale, softcap):
    return q.new_empty(*q.shape[:3], v.shape[3])


@torch.library.custom_op("omnicoder::quant_linear", mutates_args=())
def _quant_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    return quant_linear(x, qweight, scales, None, bits)


@_quant_linear_op.register_fake
def _(x, qweight, scales, bits):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("omnicoder::quant_linear_zp", mutates_args=())
def _quant_linear_zp_op(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bits: int
) -> torch.Tensor:
    return quant_linear(x, qweight, scales, None, bits, zero_points)


@_quant_linear_zp_op.register_fake
def _(x, qweight, scales, zero_points, bits):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])
