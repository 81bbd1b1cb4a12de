"""Lower the OmniCoder network to ONE ONNX decode-step graph (prefill T > 1 and decode T = 1).

Inputs:  input_ids int64 [batch, sequence], position_ids int64 [batch, sequence] (absolute positions),
         past_key_values.{i}.key / .value float [batch, kv_heads, past_sequence, width] (BNSH).
Outputs: logits [batch, sequence, vocab], present.{i}.key / .value [batch, kv_heads, total_sequence, width],
         mtp_logits [batch, sequence, n_mtp, vocab] and retention [batch, sequence, 3] when the model has them,
         query.{i} [batch, n_heads, sequence, key width]: each layer's queries against the cached key rows (a
         paging runtime scores KV pages with them).

MLA models cache one latent row per token ([latent | RoPE key], one "head"), so they have key slots only
(no .value inputs or outputs). The fused-op boundaries of `omnicoder.ops` are translated here:
`cached_attention` -> ONNX `Attention` (opset >= 23, past/present KV inputs, is_causal) or
`com.microsoft.GroupQueryAttention`; `quant_linear` -> an `omnicoder.QuantLinear` placeholder node that
`onnx_quant.py` lowers to the requested int4/int8 form.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from omnicoder import ops
from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder

ATTENTION_OPS = ("onnx", "ort-gqa")


def kv_names(config: OmniCoderConfig) -> tuple[list[str], list[str]]:
    """Graph input and output names of the KV tensors, in order."""
    slots = ("key", "value") if config.kv_value_dim > 0 else ("key",)
    inputs = [f"past_key_values.{i}.{s}" for i in range(config.n_layers) for s in slots]
    outputs = [f"present.{i}.{s}" for i in range(config.n_layers) for s in slots]
    return inputs, outputs


def output_names(config: OmniCoderConfig) -> list[str]:
    names = ["logits"]
    if config.n_mtp:
        names.append("mtp_logits")
    if config.retention_head:
        names.append("retention")
    return names + kv_names(config)[1] + query_names(config)


def query_names(config: OmniCoderConfig) -> list[str]:
    return [f"query.{i}" for i in range(config.n_layers)]


class DecodeStep(nn.Module):
    """The model with flat KV inputs and outputs, as the graph's I/O contract lays them out."""

    def __init__(self, model: OmniCoder) -> None:
        super().__init__()
        self.model = model
        self.has_values = model.config.kv_value_dim > 0

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, past: list[torch.Tensor]):
        if self.has_values:
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        else:
            pairs = [(k, k[..., :0]) for k in past]
        out = self.model(input_ids, position_ids, pairs)
        results = [out.logits]
        if out.mtp_logits is not None:
            results.append(out.mtp_logits)
        if out.retention is not None:
            results.append(out.retention)
        for key, value in out.present_kv:
            results.append(key)
            if self.has_values:
                results.append(value)
        results.extend(out.queries)
        return tuple(results)


def example_inputs(config: OmniCoderConfig, batch: int = 2, seq: int = 3, past: int = 5):
    ids = torch.randint(0, 256, (batch, seq))
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    n_kv = len(kv_names(config)[0])
    widths = (
        [config.kv_key_dim, config.kv_value_dim] * config.n_layers
        if config.kv_value_dim
        else [config.kv_key_dim] * n_kv
    )
    kv = [torch.randn(batch, config.kv_heads, past, w) for w in widths]
    return ids, positions, kv


# ---- translations of the fused-op boundaries --------------------------------------------------------


def _schema(
    name: str,
    domain: str,
    inputs: list[tuple[str, str]],
    outputs: list[tuple[str, str]],
    types: list[tuple[str, list[str]]],
    attributes: list[tuple[str, str]],
):
    from onnx.defs import OpSchema

    return OpSchema(
        name,
        domain,
        1,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in inputs],
        outputs=[OpSchema.FormalParameter(n, t) for n, t in outputs],
        type_constraints=[(t, allowed, "") for t, allowed in types],
        attributes=[OpSchema.Attribute(n, getattr(OpSchema.AttrType, kind), "") for n, kind in attributes],
    )


def _quant_linear_schema():
    """Placeholder for a quantized linear; `onnx_quant.lower_quant_linears` replaces every such node."""
    return _schema(
        "QuantLinear",
        "omnicoder",
        [("X", "T"), ("W", "Q"), ("S", "T")],
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
        [("num_heads", "INT"), ("kv_num_heads", "INT"), ("scale", "FLOAT"), ("local_window_size", "INT")],
    )


def _translations(attention_op: str, config: OmniCoderConfig) -> dict:
    from onnxscript import opset23 as op
    from onnxscript import values

    # ops outside the ONNX standard have no schema in onnx.defs; onnxscript needs one to build the node
    quant_linear_op = values.Op(values.Opset("omnicoder", 1), "QuantLinear", _quant_linear_schema())
    gqa_op = values.Op(values.Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())

    def attention_onnx(q, k, v, past_k, past_v, scale: float, window: int):
        if window > 0:
            raise OmniCoderError("sliding-window attention has no ONNX Attention form yet; export without it")
        y, present_k, present_v, _ = op.Attention(q, k, v, None, past_k, past_v, is_causal=1, scale=scale)
        return y, present_k, present_v

    def latent_attention_onnx(q, row, past_rows, latent_dim: int, scale: float, window: int):
        if window > 0:
            raise OmniCoderError("sliding-window attention has no ONNX Attention form yet; export without it")
        rows = op.Concat(past_rows, row, axis=2)
        values = op.Slice(
            rows, op.Constant(value_ints=[0]), op.Constant(value_ints=[latent_dim]), op.Constant(value_ints=[3])
        )
        total = op.Shape(rows, start=2, end=3)
        new = op.Shape(q, start=2, end=3)
        zero, one = op.Constant(value_ints=[0]), op.Constant(value_ints=[1])
        q_idx = op.Unsqueeze(op.Range(op.Squeeze(op.Sub(total, new)), op.Squeeze(total), op.Squeeze(one)), one)
        k_idx = op.Unsqueeze(op.Range(op.Squeeze(zero), op.Squeeze(total), op.Squeeze(one)), zero)
        mask = op.LessOrEqual(k_idx, q_idx)  # [T, S] bottom-right causal
        y, _, _, _ = op.Attention(q, rows, values, mask, scale=scale)
        return y, rows

    def attention_gqa(q, k, v, past_k, past_v, scale: float, window: int):
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
        )
        shape = op.Concat(
            op.Shape(q, start=0, end=1), op.Shape(q, start=2, end=3), op.Constant(value_ints=[heads, -1]), axis=0
        )
        y = op.Transpose(op.Reshape(y3, shape), perm=[0, 2, 1, 3])
        return y, present_k, present_v

    def quant_linear(x, qweight, scales, bits: int):
        return quant_linear_op(x, qweight, scales, bits=bits)

    attention = attention_gqa if attention_op == "ort-gqa" else attention_onnx
    return {
        torch.ops.omnicoder.cached_attention.default: attention,
        torch.ops.omnicoder.latent_attention.default: latent_attention_onnx,
        torch.ops.omnicoder.quant_linear.default: quant_linear,
    }


def export_decode_graph(model: OmniCoder, path: Path, opset: int = 23, attention_op: str = "onnx") -> Path:
    """torch.export the decode step with dynamic batch / sequence / past and write it to `path`."""
    config = model.config
    if opset < 23:
        raise OmniCoderError(f"--opset {opset} has no standard Attention op; use 23 or 24")
    if attention_op == "ort-gqa" and config.kv_value_dim != config.kv_key_dim:
        raise OmniCoderError("--attention ort-gqa needs equal key and value widths; MLA models use --attention onnx")
    step = DecodeStep(model.eval())
    ids, positions, kv = example_inputs(config)
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past_sequence")
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "position_ids": {0: batch, 1: seq},
        "past": [{0: batch, 2: past} for _ in kv],
    }
    in_names = ["input_ids", "position_ids", *kv_names(config)[0]]
    with ops.export_mode(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            step,
            (ids, positions, kv),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=in_names,
            output_names=output_names(config),
            custom_translation_table=_translations(attention_op, config),
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path
