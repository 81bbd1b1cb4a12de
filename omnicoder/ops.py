"""Fused-op boundaries of the network, each with its reference implementation.

The network calls only these functions for attention + KV update and for quantized linears, so there is
one definition of the model and one place per target that lowers each boundary:

- cached_attention (attention + KV update): ONNX `Attention` with past/present KV inputs (or
  `com.microsoft.GroupQueryAttention`); ExecuTorch `llama::update_cache` + `llama::custom_sdpa`;
  Core ML `scaled_dot_product_attention`.
- latent_attention (MLA over its latent cache, V = K[..., :latent]): ONNX Concat + `Attention`.
- masked_attention (attention over a cache the caller assembled, e.g. dequantized KV): ONNX `Attention`
  with an explicit bottom-right causal mask.
- quant_linear: ONNX DequantizeLinear(int4, block 32) + MatMul (ORT fuses it into MatMulNBits), or
  MatMulNBits directly, or int8 dynamic quantization; ExecuTorch torchao 8da4w; Core ML
  `constexpr_blockwise_shift_scale`.

Normally the reference (eager PyTorch) implementations run. Inside `export_mode()` the boundaries are
torch custom ops (`torch.ops.omnicoder.*`) that `torch.export` keeps as single nodes, so an exporter can
translate each one to its target's fused op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_EXPORT_MODE = False


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Route the boundaries through the `omnicoder::` custom ops while tracing for export."""
    global _EXPORT_MODE
    previous, _EXPORT_MODE = _EXPORT_MODE, True
    try:
        yield
    finally:
        _EXPORT_MODE = previous


# ---- reference implementations ---------------------------------------------------------------------


def kv_update(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Append the new tokens' keys or values [B, H, T, D] to the past ones along the sequence axis."""
    if past is None or past.shape[2] == 0:
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


def _cached_attention_ref(q, k, v, past_k, past_v, scale: float, window: int):
    keys, values = kv_update(past_k, k), kv_update(past_v, v)
    return attention(q, keys, values, scale, window), keys, values


def _latent_attention_ref(q, row, past_rows, latent_dim: int, scale: float, window: int):
    rows = kv_update(past_rows, row)
    return attention(q, rows, rows[..., :latent_dim], scale, window), rows


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """Blockwise dequantization of qweight int8 [N, K] with scales [N, K / block]: symmetric (signed codes) when
    `zero_points` is None, else (unsigned codes - zero point) * scale with float zero points [N, K / block]."""
    n, k = qweight.shape
    block = k // scales.shape[1]
    codes = qweight.to(scales.dtype).view(n, -1, block)
    if zero_points is not None:
        codes = codes - zero_points.to(scales.dtype).unsqueeze(-1)
    return (codes * scales.unsqueeze(-1)).view(n, k)


def _quant_linear_ref(x, qweight, scales, bias, bits: int, zero_points=None):
    return F.linear(x, dequantize(qweight, scales, zero_points).to(x.dtype), bias)


# ---- custom ops: the same math as single graph nodes for exporters ---------------------------------


@torch.library.custom_op("omnicoder::cached_attention", mutates_args=())
def _cached_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    scale: float,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, keys, values = _cached_attention_ref(q, k, v, past_k, past_v, scale, window)
    return out, keys.clone(), values.clone()


@_cached_attention_op.register_fake
def _(q, k, v, past_k, past_v, scale, window):
    keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    return q.new_empty(*q.shape[:3], v.shape[3]), keys, values


@torch.library.custom_op("omnicoder::latent_attention", mutates_args=())
def _latent_attention_op(
    q: torch.Tensor, row: torch.Tensor, past_rows: torch.Tensor, latent_dim: int, scale: float, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    out, rows = _latent_attention_ref(q, row, past_rows, latent_dim, scale, window)
    return out, rows.clone()


@_latent_attention_op.register_fake
def _(q, row, past_rows, latent_dim, scale, window):
    return q.new_empty(*q.shape[:3], latent_dim), torch.cat((past_rows, row), dim=2)


@torch.library.custom_op("omnicoder::masked_attention", mutates_args=())
def _masked_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    return attention(q, k, v, scale, window)


@_masked_attention_op.register_fake
def _(q, k, v, scale, window):
    return q.new_empty(*q.shape[:3], v.shape[3])


@torch.library.custom_op("omnicoder::quant_linear", mutates_args=())
def _quant_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    return _quant_linear_ref(x, qweight, scales, None, bits)


@_quant_linear_op.register_fake
def _(x, qweight, scales, bits):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("omnicoder::quant_linear_zp", mutates_args=())
def _quant_linear_zp_op(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bits: int
) -> torch.Tensor:
    return _quant_linear_ref(x, qweight, scales, None, bits, zero_points)


@_quant_linear_zp_op.register_fake
def _(x, qweight, scales, zero_points, bits):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


# ---- the boundaries the network calls ---------------------------------------------------------------


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor | None,
    past_v: torch.Tensor | None,
    scale: float,
    window: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KV update + causal attention: returns (output, all keys, all values) for the layer.

    k, v are the T new tokens' keys/values; past_k, past_v the cached ones (or None).
    """
    if _EXPORT_MODE:
        if past_k is None:
            past_k, past_v = k[:, :, :0], v[:, :, :0]
        return torch.ops.omnicoder.cached_attention(q, k, v, past_k, past_v, scale, window)
    return _cached_attention_ref(q, k, v, past_k, past_v, scale, window)


def latent_attention(
    q: torch.Tensor, row: torch.Tensor, past_rows: torch.Tensor | None, latent_dim: int, scale: float, window: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA's attention over its latent cache: keys are the rows [B, 1, S, latent | rope], values the rows'
    first `latent_dim` columns. Returns (output [B, H, T, latent_dim], all rows)."""
    if _EXPORT_MODE:
        if past_rows is None:
            past_rows = row[:, :, :0]
        return torch.ops.omnicoder.latent_attention(q, row, past_rows, latent_dim, scale, window)
    return _latent_attention_ref(q, row, past_rows, latent_dim, scale, window)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0) -> torch.Tensor:
    """Causal attention of the T newest positions over a cache the caller already assembled (past + new rows).

    Used when the cache is stored in another form than the attention reads (quantized KV): the caller
    dequantizes and concatenates; no present KV comes back.
    """
    if _EXPORT_MODE:
        return torch.ops.omnicoder.masked_attention(q, k, v, scale, window)
    return attention(q, k, v, scale, window)


def quant_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    zero_points: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ dequantize(qweight, scales, zero_points).T + bias, with `bits`-bit codes in blocks (symmetric, or
    asymmetric with zero points: the ONNX exporter's MatMulNBits; other targets take symmetric codes only)."""
    if _EXPORT_MODE:
        if zero_points is None:
            y = torch.ops.omnicoder.quant_linear(x, qweight, scales, bits)
        else:
            y = torch.ops.omnicoder.quant_linear_zp(x, qweight, scales, zero_points, bits)
        return y if bias is None else y + bias
    return _quant_linear_ref(x, qweight, scales, bias, bits, zero_points)
