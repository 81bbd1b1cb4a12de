"""Lower the OmniCoder network to ONE ONNX decode-step graph (prefill T > 1 and decode T = 1).

Inputs:  input_ids int64 [batch, sequence], position_ids int64 [batch, sequence] (absolute positions),
         past_key_values.{i}.key / .value float [batch, kv_heads, past_sequence, width] (BNSH).
Outputs: logits [batch, sequence, vocab], present.{i}.key / .value [batch, kv_heads, total_sequence, width],
         mtp_logits [batch, sequence, n_mtp, vocab] and retention [batch, sequence, 3] when the model has them,
         query.{i} [batch, n_heads, sequence, key width] (exported on request, `--query-outputs`): each layer's
         queries against the cached key rows (predicted KV pages and H2O retention score with them).

MLA models cache one latent row per token ([latent | RoPE key], one "head"), so they have key slots only
(no .value inputs or outputs). The names come from `omnicoder.io_contract`, the module from
`omnicoder.decode_step`. The ONNX lowering is this exporter's KV-slot class (`kv_slot.CustomOpKV`: attention as
`torch.ops.omnicoder.*` nodes), its module swap (`quant.QuantLinearOp`) and its translation table:
`cached_attention` -> ONNX `Attention` (opset >= 23, past/present KV inputs, is_causal) or
`com.microsoft.GroupQueryAttention`; each layer's scale, sliding window (the slot's mask) and logit soft-cap
(`Attention`'s `softcap` attribute, applied before the mask; onnxruntime's CPU kernel honours it) are that node's
own, so layers may differ; `quant_linear` -> an `omnicoder.QuantLinear` placeholder node that
`onnx_quant.py` lowers to the requested int4/int8 form.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from omnicoder.export.onnx_moe import moe_translations, prepare_moe

from omnicoder.config import OmniCoderConfig
from omnicoder.decode_step import DecodeStep, example_inputs
from omnicoder.errors import OmniCoderError
from omnicoder.io_contract import INPUT_IDS, POSITION_IDS, kv_names, output_names, windowed_kv
from omnicoder.kv_quant import KVQuantSpec
from omnicoder.kv_slot import CustomOpKV
from omnicoder.model import OmniCoder
from omnicoder.module_swap import swapped_modules
from omnicoder.quant import as_op_form

ATTENTION_OPS = ("onnx", "ort-gqa")


# ---- translations of the fused-op boundaries --------------------------------------------------------


def _schema(
    name: str,
    domain: str,
    inputs: list[tuple[str, ...]],  # (name, type) or (name, type, "optional")
    outputs: list[tuple[str, str]],
    types: list[tuple[str, list[str]]],
    attributes: list[tuple[str, str]],
):
    from onnx.defs import OpSchema

    return OpSchema(
        name,
        domain,
        1,
        inputs=[
            OpSchema.FormalParameter(n, t, param_option=OpSchema.FormalParameterOption.Optional)
            if optional
            else OpSchema.FormalParameter(n, t)
            for n, t, *optional in inputs
        ],
        outputs=[OpSchema.FormalParameter(n, t) for n, t in outputs],
        type_constraints=[(t, allowed, "") for t, allowed in types],
        attributes=[OpSchema.Attribute(n, getattr(OpSchema.AttrType, kind), "") for n, kind in attributes],
    )


def _quant_linear_schema():
    """Placeholder for a quantized linear; `onnx_quant.lower_quant_linears` replaces every such node."""
    return _schema(
        "QuantLinear",
        "omnicoder",
        [("X", "T"), ("W", "Q"), ("S", "T"), ("Z", "T", "optional")],
        [("Y", "T")],
        [("T", ["tensor(float)", "tensor(float16)"]), ("Q", ["tensor(int8)"])],
        [("bits", "INT")],
    )


def _gqa_schema():
    """The subset of onnxruntime's com.microsoft.GroupQueryAttention that the export uses."""
    return _schema(
        "GroupQueryAttention",
        "com.microsoft",
        [
            ("query", "T"),
            ("key", "T"),
            ("value", "T"),
            ("past_key", "T"),
            ("past_value", "T"),
            ("seqlens_k", "M"),
            ("total_sequence_length", "M"),
        ],
        [("output", "T"), ("present_key", "T"), ("present_value", "T")],
        [("T", ["tensor(float)", "tensor(float16)"]), ("M", ["tensor(int32)"])],
        [
            ("num_heads", "INT"),
            ("kv_num_heads", "INT"),
            ("scale", "FLOAT"),
            ("local_window_size", "INT"),
            ("softcap", "FLOAT"),
        ],
    )


def _translations(attention_op: str, config: OmniCoderConfig, accuracy_level: int = 4) -> dict:
    from onnxscript import opset23 as op
    from onnxscript import values

    # ops outside the ONNX standard have no schema in onnx.defs; onnxscript needs one to build the node
    quant_linear_op = values.Op(values.Opset("omnicoder", 1), "QuantLinear", _quant_linear_schema())
    gqa_op = values.Op(values.Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())

    def capped(softcap: float) -> dict:
        """The `softcap` attribute only where a layer has one (graphs of other models stay as they were)."""
        return {"softcap": softcap} if softcap > 0 else {}

    def attention_onnx(q, k, v, past_k, past_v, mask, scale: float, window: int, softcap: float):
        if window > 0:  # sliding window: the slot's mask (ops.causal_mask) instead of is_causal
            y, present_k, present_v, _ = op.Attention(q, k, v, mask, past_k, past_v, scale=scale, **capped(softcap))
            return y, present_k, present_v
        y, present_k, present_v, _ = op.Attention(
            q, k, v, None, past_k, past_v, is_causal=1, scale=scale, **capped(softcap)
        )
        return y, present_k, present_v

    def latent_attention_onnx(q, row, past_rows, mask, latent_dim: int, scale: float, softcap: float):
        rows = op.Concat(past_rows, row, axis=2)
        values = op.Slice(
            rows, op.Constant(value_ints=[0]), op.Constant(value_ints=[latent_dim]), op.Constant(value_ints=[3])
        )
        y, _, _, _ = op.Attention(q, rows, values, mask, scale=scale, **capped(softcap))
        return y, rows

    def attention_gqa(q, k, v, past_k, past_v, mask, scale: float, window: int, softcap: float):
        # com.microsoft.GroupQueryAttention takes BSH (3-D) queries and BNSH caches
        heads, kv_heads = config.n_heads, config.n_kv_heads
        q3 = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
        k3 = op.Reshape(op.Transpose(k, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
        v3 = op.Reshape(op.Transpose(v, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
        total = op.Add(op.Shape(past_k, start=2, end=3), op.Shape(q, start=2, end=3))
        total32 = op.Cast(op.Squeeze(total), to=6)
        batch = op.Shape(q, start=0, end=1)
        seqlens = op.Expand(op.Cast(op.Sub(total, op.Constant(value_ints=[1])), to=6), batch)
        y3, present_k, present_v = gqa_op(
            q3,
            k3,
            v3,
            past_k,
            past_v,
            seqlens,
            total32,
            num_heads=heads,
            kv_num_heads=kv_heads,
            scale=scale,
            local_window_size=window if window > 0 else -1,
            _outputs=3,
            **capped(softcap),
        )
        shape = op.Concat(
            op.Shape(q, start=0, end=1), op.Shape(q, start=2, end=3), op.Constant(value_ints=[heads, -1]), axis=0
        )
        y = op.Transpose(op.Reshape(y3, shape), perm=[0, 2, 1, 3])
        return y, present_k, present_v

    def masked_attention_onnx(q, k, v, mask, scale: float, softcap: float):
        """Attention over an assembled cache [B, H, S, D] with the slot's bottom-right causal (banded) mask."""
        y, _, _, _ = op.Attention(q, k, v, mask, scale=scale, **capped(softcap))
        return y

    def quant_linear(x, qweight, scales, bits: int):
        return quant_linear_op(x, qweight, scales, bits=bits)

    def quant_linear_zp(x, qweight, scales, zero_points, bits: int):
        return quant_linear_op(x, qweight, scales, zero_points, bits=bits)

    attention = attention_gqa if attention_op == "ort-gqa" else attention_onnx
    return {
        torch.ops.omnicoder.cached_attention.default: attention,
        torch.ops.omnicoder.latent_attention.default: latent_attention_onnx,
        torch.ops.omnicoder.masked_attention.default: masked_attention_onnx,
        torch.ops.omnicoder.quant_linear.default: quant_linear,
        torch.ops.omnicoder.quant_linear_zp.default: quant_linear_zp,
        **moe_translations(accuracy_level),
    }


def export_decode_graph(
    model: OmniCoder,
    path: Path,
    opset: int = 23,
    attention_op: str = "onnx",
    kv_spec: KVQuantSpec | None = None,
    queries: bool = True,
    moe_lowering: str | None = None,
    accuracy_level: int = 4,
) -> Path:
    """torch.export the decode step with dynamic batch / sequence / past and write it to `path`.

    `queries`: also output each layer's rotated queries (`query.{i}`), which predicted KV pages and H2O
    retention read; onnxruntime runs every node whether or not an output is fetched, so they cost a little.
    """
    config = model.config
    kv_spec = (kv_spec or KVQuantSpec()).validate()
    if opset < 23:
        raise OmniCoderError(f"--opset {opset} has no standard Attention op; use 23 or 24")
    if attention_op == "ort-gqa" and config.kv_value_dim != config.kv_key_dim:
        raise OmniCoderError("--attention ort-gqa needs equal key and value widths; MLA models use --attention onnx")
    step = DecodeStep(model.eval(), kv_spec, queries, slot_class=CustomOpKV)
    ids, positions, kv = example_inputs(config, spec=kv_spec)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # a sliding-window layer's past has its own length (a runtime may keep only its newest rows)
    past = {False: torch.export.Dim("past_sequence"), True: torch.export.Dim("past_window_sequence")}
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "position_ids": {0: batch, 1: seq},
        "past": [{0: batch, 2: past[windowed]} for windowed in windowed_kv(config, kv_spec)],
    }
    in_names = [INPUT_IDS, POSITION_IDS, *kv_names(config, kv_spec)[0]]
    moe = prepare_moe(model, moe_lowering)
    with moe, swapped_modules(model, as_op_form), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            step,
            (ids, positions, kv),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=in_names,
            output_names=output_names(config, kv_spec, queries),
            custom_translation_table=_translations(attention_op, config, accuracy_level),
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path
