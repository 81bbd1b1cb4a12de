"""Fusions on the converted ONNX decode graph: fewer, larger kernels for the same arithmetic.

The network is still written once (omnicoder/model.py); these passes only regroup what the converter emitted:

- `merge_sibling_quant_linears`: quantized linears that read the same activation (q/k/v, gate/up, MTP heads)
  become one `omnicoder.QuantLinear` over the weights concatenated along N, then a `Split`. One MatMulNBits
  call instead of three quantizes the activation once and walks one weight stream.
- `fuse_skip_rms_norm`: residual `Add` + `RMSNormalization` -> `com.microsoft.SkipSimplifiedLayerNormalization`
  (the sum is still available for the next residual).
- `attention_bsh`: the `Reshape -> Transpose -> RotaryEmbedding -> Attention -> Transpose -> Reshape` chain
  becomes 3-D (BSH) `RotaryEmbedding` and `Attention` (`q_num_heads` / `kv_num_heads`), with no layout ops.
  Where a layer's rotated queries are a graph output (`query.{i}`, BNSH) they are reshaped for that output only.
- `shared_buffer_attention`: `--kv-io shared` (see its docstring).

The last three are onnxscript rewrite rules (export/onnx_rewrite_rules.py); all run on onnx_ir's graph, whose
dead-code pass drops what the rewrites leave unread. Each takes and updates a ModelProto in place.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
from omnicoder.export.onnx_rewrite_rules import (
    ATTENTION_BSH,
    SKIP_RMS_NORM,
    PackedRotaryAttention,
    SharedKvAttention,
    apply_rules,
)
from onnx_ir.passes.common import RemoveUnusedNodesPass


def _rewrite(model: onnx.ModelProto, passes: Callable[[ir.Model], dict[str, int]]) -> dict[str, int]:
    """Run `passes` on the IR of `model`; when any changed something, drop the nodes and initializers nothing
    reads and write the graph back into `model`. Returns what `passes` counted."""
    ir_model = ir.from_proto(model)
    infos = {info.name: info.type for info in model.graph.value_info}
    for value in ir_model.graph.outputs:  # declared without a shape, value_info may give one (onnx_ir reads the former)
        if value.shape is None and value.name in infos:
            value.shape = ir.serde.deserialize_type_proto_for_shape(infos[value.name])
    counts = passes(ir_model)
    if any(counts.values()):
        while RemoveUnusedNodesPass()(ir_model).modified:  # again: a rewrite may leave a dead reader before its input
            pass
        proto = ir.to_proto(ir_model)
        weights = {t.name for t in proto.graph.initializer}  # onnx_ir describes initializers in value_info too
        infos = [info for info in proto.graph.value_info if info.name not in weights]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(infos)
        model.CopyFrom(proto)
    return counts


# ---- quantized linears that share their input ---------------------------------------------------------


def merge_sibling_quant_linears(model: onnx.ModelProto) -> int:
    """Merge `omnicoder.QuantLinear` nodes with the same input, bits and block; returns how many were merged away.
    (Not a pattern: a group has any number of siblings, found through the input's readers.)"""
    return _rewrite(model, lambda m: {"merged": _merge_siblings(m.graph)})["merged"]


def _merge_siblings(graph: ir.Graph) -> int:
    groups: dict[tuple, list[ir.Node]] = {}
    for node in graph:
        if node.domain == "omnicoder" and node.op_type == "QuantLinear":
            codes, scales = node.inputs[1].const_value, node.inputs[2].const_value
            asymmetric = len(node.inputs) > 3 and node.inputs[3] is not None
            bits = node.attributes.get_int("bits")
            key = (node.inputs[0], bits, tuple(codes.shape[1:]), tuple(scales.shape[1:]), asymmetric)
            groups.setdefault(key, []).append(node)
    merged = 0
    for index, ((x, bits, _, _, asymmetric), nodes) in enumerate(groups.items()):
        if len(nodes) < 2:
            continue
        name = f"fused_linear{index}"
        weights = []
        for i, part in enumerate(("codes", "scales", "zeros")[: 3 if asymmetric else 2], start=1):
            array = np.concatenate([n.inputs[i].const_value.numpy() for n in nodes])
            weights.append(_initializer(graph, array, f"{name}_{part}"))
        rows = [n.inputs[1].const_value.shape[0] for n in nodes]
        sizes = _initializer(graph, np.array(rows, np.int64), name + "_split")
        fused = ir.Node("omnicoder", "QuantLinear", [x, *weights], [ir.AttrInt64("bits", bits)], name=name)
        fused.outputs[0].name = name
        split = ir.Node(
            "",
            "Split",
            [fused.outputs[0], sizes],
            [ir.AttrInt64("axis", -1)],
            num_outputs=len(nodes),
            name=name + "_split",
        )
        graph.insert_before(nodes[0], [fused, split])
        olds = [n.outputs[0] for n in nodes]
        ir.convenience.replace_all_uses_with(olds, split.outputs, replace_graph_outputs=True)
        graph.remove(nodes, safe=True)
        for old, new in zip(olds, split.outputs, strict=True):
            new.name, new.shape, new.type = old.name, old.shape, old.type
        merged += len(nodes) - 1
    return merged


def _initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    return value


# ---- residual add + RMSNorm, attention without layout ops -------------------------------------------


def fuse_skip_rms_norm(model: onnx.ModelProto) -> int:
    """Add(a, b) -> RMSNormalization(gamma) as one SkipSimplifiedLayerNormalization; returns how many."""
    return _rewrite(model, lambda m: {"skip_rms_norm": apply_rules(m, SKIP_RMS_NORM)})["skip_rms_norm"]


def attention_bsh(model: onnx.ModelProto) -> int:
    """Rewrite BNSH Attention layers to BSH (3-D) Attention + RotaryEmbedding; returns how many layers."""
    return _rewrite(model, lambda m: {"attention_bsh": apply_rules(m, ATTENTION_BSH)})["attention_bsh"]


def apply_fusions(model: onnx.ModelProto) -> dict[str, int]:
    """The float-graph fusions (run after `merge_sibling_quant_linears` and the quantized-linear lowering)."""
    return _rewrite(
        model,
        lambda m: {"skip_rms_norm": apply_rules(m, SKIP_RMS_NORM), "attention_bsh": apply_rules(m, ATTENTION_BSH)},
    )


# ---- --kv-io shared ------------------------------------------------------------------------------------


def shared_buffer_attention(model: onnx.ModelProto, window: int, rotary: tuple | None = None) -> int:
    """`--kv-io shared`: every (3-D) `Attention` becomes `com.microsoft.GroupQueryAttention` over KV buffers that
    the runner binds as both past and present (onnxruntime writes the new rows in place; nothing is copied).
    With `rotary` = (cos, sin) tables [positions, head_dim / 2] of the model's RoPE, a layer whose q/k/v come from
    one merged linear (Split -> RotaryEmbedding) takes that linear's output packed and rotates inside
    (`do_rotary`; its positions are the slots, which equal the absolute positions here).

    The past inputs are then buffers of a fixed capacity whose slot = absolute position: the rows in use are
    the first position_ids[:, 0]. GroupQueryAttention learns the lengths from `seqlens_k` (last position) and
    `total_sequence_length` (its maximum + 1), both computed once from position_ids. Returns how many layers.
    """
    return _rewrite(model, lambda m: {"layers": _shared_buffers(m, window, rotary)})["layers"]


def _shared_buffers(model: ir.Model, window: int, rotary: tuple | None) -> int:
    graph = model.graph
    attentions = [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions or any(n.attributes.get_int("q_num_heads") is None for n in attentions):
        return 0  # attention_bsh did not apply (e.g. MLA): the caller refuses the bundle
    lengths = _lengths(graph, attentions[0])
    layers = apply_rules(model, [SharedKvAttention.rule(window, lengths)])
    if rotary is not None:
        cos, sin = (np.ascontiguousarray(t, dtype=np.float32) for t in rotary)
        tables = (_initializer(graph, cos, "shared_kv_cos"), _initializer(graph, sin, "shared_kv_sin"))
        apply_rules(model, [PackedRotaryAttention.rule(tables)])
    return layers


def _lengths(graph: ir.Graph, before: ir.Node) -> tuple[ir.Value, ir.Value]:
    """seqlens_k [B] (each sequence's last position, int32) and total_sequence_length (its maximum + 1)."""
    prefix = "shared_kv"
    last, end, axis, one = (
        _initializer(graph, array, f"{prefix}_{name}")
        for name, array in (
            ("last", np.array([-1], np.int64)),
            ("end", np.array([2**62], np.int64)),
            ("axis", np.array([1], np.int64)),
            ("one", np.array(1, np.int32)),
        )
    )
    positions = next(v for v in graph.inputs if v.name == "position_ids")
    tape = ir.tape.Tape()
    last_pos = tape.op("Slice", [positions, last, end, axis], output=ir.Value(name=f"{prefix}_last_pos"))
    last32 = tape.op("Cast", [last_pos], {"to": int(ir.DataType.INT32)}, output=ir.Value(name=f"{prefix}_last32"))
    seqlens = tape.op("Squeeze", [last32, axis], output=ir.Value(name="seqlens_k"))
    top = tape.op("ReduceMax", [seqlens], {"keepdims": 0}, output=ir.Value(name=f"{prefix}_max"))
    total = tape.op("Add", [top, one], output=ir.Value(name="total_sequence_length"))
    graph.insert_before(before, tape.nodes)
    return seqlens, total
