"""Core ML attention: the `omnicoder_coreml::mla` custom op, its coremltools lowering, and the KV-cache forms.

- `omnicoder_coreml::mla` (q, rows, mask, latent_dim, scale) is MLA's absorbed attention over the latent rows
  (one shared KV "head", V = rows[..., :latent_dim]). Its eager implementation is the composite `mla_composite`
  (standard aten ops ending in `F.scaled_dot_product_attention`). `register_lowerings()` adds a coremltools
  torch-frontend op that maps it natively onto one iOS18 MIL `scaled_dot_product_attention`; with `native=False`
  the exporter decomposes it with `mla_composite` instead (the fallback, which coremltools also turns into SDPA).
- GQA layers call `grouped_sdpa`: the query heads of each KV head become extra query rows, so MIL's SDPA (which
  needs equal batch/head dims and takes no `scale`) runs once per layer without copying K/V. A soft-capped layer
  (Gemma 2) writes the same grouped attention out (matmul, tanh, add mask, softmax, matmul): MIL's SDPA has no cap.
- The KV-slot classes (`omnicoder.kv_slot`): `StateSlot` (stateful models) writes a layer's new keys into the
  stacked `keyCache` / `valueCache` buffers at slots [end - T, end) and attends over slots [0, end); `IOKVSlot`
  (`--kv io`: KV in, present KV out) concatenates past and new and attends the same way.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from omnicoder import ops
from omnicoder.kv_slot import AttentionSpec, PastKV
from omnicoder.ops import causal_mask, newest_mask, softcap_scores
from omnicoder.static_kv import StaticKVSlot

MASKED = -30000.0  # additive mask value: large enough for softmax, safe in fp16 (coremltools uses the same)


# ---- the MLA custom op -------------------------------------------------------------------------------


def mla_composite(q: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, latent_dim: int, scale: float):
    """q [B, H, T, E], rows [B, 1, S, E], additive mask [T, S] -> [B, H, T, latent_dim] (V = rows[..., :latent])."""
    b, h, t, e = q.shape
    queries = (q * (scale * math.sqrt(e))).reshape(b, 1, h * t, e)  # every head attends the one latent head
    out = F.scaled_dot_product_attention(queries, rows, rows[..., :latent_dim], attn_mask=mask.repeat(h, 1))
    return out.unflatten(2, (h, t)).flatten(1, 2)


@torch.library.custom_op("omnicoder_coreml::mla", mutates_args=())
def mla(q: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, latent_dim: int, scale: float) -> torch.Tensor:
    return mla_composite(q, rows, mask, latent_dim, scale)


@mla.register_fake
def _(q, rows, mask, latent_dim, scale):
    return q.new_empty(*q.shape[:3], latent_dim)


def mla_decompositions() -> dict:
    """The fallback: a decomposition table that replaces the custom op by its composite form."""
    return {torch.ops.omnicoder_coreml.mla.default: mla_composite}


@torch.library.custom_op("omnicoder_coreml::quant_embedding", mutates_args=())
def quant_embedding(
    ids: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Rows `ids` of the blockwise-quantized table (codes [V, D], scales [V, D / block]) -> [*ids.shape, D] fp32."""
    return F.embedding(ids.long(), ops.dequantize(qweight, scales, zero_points))


@quant_embedding.register_fake
def _(ids, qweight, scales, zero_points, bits):
    return scales.new_empty(*ids.shape, qweight.shape[1])


class QuantEmbedding(torch.nn.Module):
    """An embedding whose table is blockwise-quantized codes (its own, or a tied LM head's very buffers)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zero_points", zero_points)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.omnicoder_coreml.quant_embedding(ids, self.qweight, self.scales, self.zero_points, self.bits)


_LOWERINGS_REGISTERED = False


def register_lowerings() -> None:
    """Teach coremltools' torch frontend the two custom ops the Core ML export emits.

    - `omnicoder_coreml::mla` -> one MIL `scaled_dot_product_attention` (all heads as query rows of the one latent
      KV head; the scale folded into the query, since the MIL op always uses 1/sqrt(E)).
    - `omnicoder::quant_linear` / `quant_linear_zp` (`quant.QuantLinearOp`) -> `constexpr_blockwise_shift_scale` (the
      model's own int4/int8 codes and per-block scales in fp16; with zero points: unsigned codes and fp16 offsets,
      a GGUF Q4_1 block) feeding `linear`: the codes PyTorch and the other targets use, rounded once.
    - `omnicoder_coreml::quant_embedding` -> `gather` over the same kind of constexpr table; a tied embedding passes
      the LM head's codes, and the two ops then read one constexpr (the codes are stored once).
    """
    global _LOWERINGS_REGISTERED
    if _LOWERINGS_REGISTERED:
        return
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget
    from coremltools.converters.mil.frontend._utils import _decompose_scaled_dot_product_attention
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.block import is_current_opset_version_compatible_with
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    def omnicoder_coreml_mla(context, node):
        q, rows, mask, latent_dim, scale = _get_inputs(context, node, expected=5)
        b, h, _, e = q.shape
        if any(is_symbolic(d) for d in (b, h, e)):
            raise ValueError("omnicoder_coreml::mla needs static batch, head and width dims")
        latent = int(latent_dim.val)
        queries = mb.mul(x=q, y=float(scale.val) * math.sqrt(e))
        queries = mb.reshape(x=queries, shape=[b, 1, -1, e])
        values = mb.slice_by_index(
            x=rows, begin=[0, 0, 0, 0], end=[0, 0, 0, latent], end_mask=[True, True, True, False]
        )
        mask = mb.tile(x=mask, reps=[h, 1])
        if is_current_opset_version_compatible_with(AvailableTarget.iOS18):
            out = mb.scaled_dot_product_attention(query=queries, key=rows, value=values, attn_mask=mask)
        else:  # iOS17 has no SDPA op: coremltools' own decomposition (matmul, softmax, matmul)
            out = _decompose_scaled_dot_product_attention(queries, rows, values, mask, node.name + "_sdpa")
        context.add(mb.reshape(x=out, shape=[b, h, -1, latent], name=node.name))

    def blockwise_weight(context, name: str, qweight, scales, zero_points, bits: int):
        """One constexpr_blockwise_shift_scale per distinct code tensor: a tied LM head and embedding share it."""
        if qweight.val is None or scales.val is None or (zero_points is not None and zero_points.val is None):
            raise ValueError(f"{name} needs constant quantized weights")
        key = hashlib.sha1(qweight.val.tobytes() + scales.val.tobytes()).hexdigest()
        made = context.__dict__.setdefault("_omnicoder_constexpr", {})
        if key not in made:
            signed = zero_points is None  # symmetric: signed codes; with zero points: unsigned codes, fp16 offsets
            dtype = {(4, True): types.int4, (8, True): types.int8, (4, False): types.uint4, (8, False): types.uint8}
            np_dtype = types.nptype_from_builtin(dtype[bits, signed])
            codes = qweight.val.astype(np.int16).astype(np_dtype)
            extra = {} if signed else {"offset": zero_points.val.astype(np.float16)}
            made[key] = mb.constexpr_blockwise_shift_scale(
                data=codes, scale=scales.val.astype(np.float16), name=name + "_weight", **extra
            )
        return made[key]

    def quant_linear(context, node, x, qweight, scales, zero_points, bits):
        weight = blockwise_weight(context, node.name, qweight, scales, zero_points, int(bits.val))
        if x.dtype != types.fp16:
            x = mb.cast(x=x, dtype="fp16")
        context.add(mb.cast(x=mb.linear(x=x, weight=weight), dtype="fp32", name=node.name))

    def omnicoder_quant_linear(context, node):
        x, qweight, scales, bits = _get_inputs(context, node, expected=4)
        quant_linear(context, node, x, qweight, scales, None, bits)

    def omnicoder_quant_linear_zp(context, node):
        x, qweight, scales, zero_points, bits = _get_inputs(context, node, expected=5)
        quant_linear(context, node, x, qweight, scales, zero_points, bits)

    def omnicoder_coreml_quant_embedding(context, node):
        ids, qweight, scales, zero_points, bits = _get_inputs(context, node, expected=5)
        table = blockwise_weight(context, node.name, qweight, scales, zero_points, int(bits.val))
        if ids.dtype != types.int32:
            ids = mb.cast(x=ids, dtype="int32")
        context.add(mb.cast(x=mb.gather(x=table, indices=ids, axis=0), dtype="fp32", name=node.name))

    register_torch_op(omnicoder_coreml_mla, torch_alias=["omnicoder_coreml::mla", "omnicoder_coreml.mla"])
    register_torch_op(omnicoder_quant_linear, torch_alias=["omnicoder::quant_linear", "omnicoder.quant_linear"])
    register_torch_op(
        omnicoder_quant_linear_zp, torch_alias=["omnicoder::quant_linear_zp", "omnicoder.quant_linear_zp"]
    )
    register_torch_op(
        omnicoder_coreml_quant_embedding,
        torch_alias=["omnicoder_coreml::quant_embedding", "omnicoder_coreml.quant_embedding"],
    )
    _LOWERINGS_REGISTERED = True


# ---- masks and GQA -------------------------------------------------------------------------------------


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """0 where allowed, MASKED elsewhere (arithmetic: coremltools types `where(cond, scalar, scalar)` as a scalar)."""
    return (1.0 - allowed.to(torch.float32)) * MASKED


def grouped_sdpa(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float = 0.0
):
    """GQA attention as one SDPA: q [B, Hq, T, D] over keys/values [B, Hkv, S, D*] with additive mask [T, S]
    (written out when `softcap` > 0: scores soft-capped before the mask)."""
    _, hq, t, d = q.shape
    group = hq // keys.shape[1]
    if softcap > 0:
        queries = q.unflatten(1, (keys.shape[1], group)).flatten(2, 3)
        scores = softcap_scores(torch.matmul(queries, keys.transpose(-1, -2)) * scale, softcap)
        out = torch.softmax(scores + mask.repeat(group, 1), dim=-1) @ values
        return out.unflatten(2, (group, t)).flatten(1, 2)
    if not math.isclose(scale * math.sqrt(d), 1.0):
        q = q * (scale * math.sqrt(d))  # the MIL op has no scale argument: fold it into the query
    queries = q.unflatten(1, (keys.shape[1], group)).flatten(2, 3)  # [B, Hkv, G*T, D], no K/V copies
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask.repeat(group, 1))
    return out.unflatten(2, (group, t)).flatten(1, 2)


# ---- stateful cache (keyCache / valueCache) ---------------------------------------------------------


class StateSlot(StaticKVSlot):
    """One layer's view of the stacked state buffers [L, B, H, S, D]; the step's tokens fill slots [end - T, end)."""

    def __init__(
        self,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor | None,
        layer: int,
        input_pos: torch.Tensor,
        end,
        extra_mask: torch.Tensor,
    ) -> None:
        super().__init__(key_cache, value_cache, input_pos)
        self.layer, self.end, self.extra_mask = layer, end, extra_mask

    def mask(self, window: int) -> torch.Tensor:
        """[T, end] additive: causal by position, plus the caller's causalMask."""
        return additive_mask(causal_mask(self.input_pos, self.end, window)) + self.extra_mask

    def update(self, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        cache[self.layer, :, :, self.end - new.shape[2] : self.end] = new
        return cache[self.layer, :, :, : self.end]

    def sdpa(self, q, k, v, spec: AttentionSpec) -> torch.Tensor:
        return grouped_sdpa(q, k, v, self.mask(spec.window), spec.scale, spec.softcap)

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        rows = self.update(self.key, row)  # MLA layers have no soft-cap (the config refuses it)
        return torch.ops.omnicoder_coreml.mla(q, rows, self.mask(spec.window), latent_dim, spec.scale), rows


# ---- KV-in / KV-out graphs -----------------------------------------------------------------------------


class IOKVSlot(PastKV):
    """One layer's past KV tensors (KV in / KV out): past + new by concatenation, attended like StateSlot."""

    @staticmethod
    def mask(q_len, kv_len, window: int) -> torch.Tensor:
        """[T, S] additive, bottom-right causal."""
        return additive_mask(newest_mask(q_len, kv_len, window))

    @staticmethod
    def sdpa(q, keys, values, spec: AttentionSpec) -> torch.Tensor:
        mask = IOKVSlot.mask(q.shape[2], keys.shape[2], spec.window)
        return grouped_sdpa(q, keys, values, mask, spec.scale, spec.softcap)

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        rows = self.rows(row)
        mask = self.mask(q.shape[2], rows.shape[2], spec.window)
        return torch.ops.omnicoder_coreml.mla(q, rows, mask, latent_dim, spec.scale), rows
