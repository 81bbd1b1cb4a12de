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

Each pass matches conservatively (shapes from the converter's value_info) and leaves anything else as it was.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class _Graph:
    """Producer / consumer maps and shapes of a graph (rebuilt after each pass)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.inits = {init.name: init for init in graph.initializer}
        self.shapes = {}
        for info in [*graph.value_info, *graph.input, *graph.output]:
            if not info.type.tensor_type.HasField("shape"):
                continue  # unknown here; another entry for the name may know it
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = [d.dim_param or d.dim_value for d in dims]

    def used(self, name: str) -> bool:
        return name in self.outputs or bool(self.consumers.get(name))

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Drop nodes none of whose outputs is used (repeatedly), and initializers nothing reads."""
    removed = 0
    while True:
        g = _Graph(model)
        keep = [n for n in model.graph.node if any(g.used(o) for o in n.output if o)]
        if len(keep) == len(model.graph.node):
            break
        removed += len(model.graph.node) - len(keep)
        _replace_nodes(model, keep)
    g = _Graph(model)
    inits = [i for i in model.graph.initializer if g.consumers.get(i.name) or i.name in g.outputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    infos = [v for v in model.graph.value_info if v.name in g.producer]  # shapes of names that still exist
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    return removed


# ---- quantized linears that share their input ---------------------------------------------------------


def merge_sibling_quant_linears(model: onnx.ModelProto) -> int:
    """Merge `omnicoder.QuantLinear` nodes with the same input, bits and block; returns how many were merged away."""
    g = _Graph(model)
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.domain == "omnicoder" and node.op_type == "QuantLinear":
            codes, scales = g.inits[node.input[1]], g.inits[node.input[2]]
            asymmetric = len(node.input) > 3 and bool(node.input[3])
            key = (node.input[0], _attr(node, "bits"), tuple(codes.dims[1:]), tuple(scales.dims[1:]), asymmetric)
            groups.setdefault(key, []).append(node)
    merged: dict[int, list[onnx.NodeProto]] = {}  # id(first sibling) -> nodes that replace the group
    dropped: set[int] = set()
    for index, ((x, bits, _, _, asymmetric), nodes) in enumerate(groups.items()):
        if len(nodes) < 2:
            continue
        parts = range(4 if asymmetric else 3)[1:]  # codes, scales (, zero points): all concatenated along N
        arrays = [[numpy_helper.to_array(g.inits[n.input[i]]) for n in nodes] for i in parts]
        name = f"fused_linear{index}"
        inputs = [f"{name}_{part}" for part in ("codes", "scales", "zeros")[: len(arrays)]]
        model.graph.initializer.extend(
            [numpy_helper.from_array(np.concatenate(a), n) for a, n in zip(arrays, inputs, strict=True)]
            + [numpy_helper.from_array(np.array([c.shape[0] for c in arrays[0]], np.int64), name + "_split")]
        )
        fused = helper.make_node("QuantLinear", [x, *inputs], [name], name=name, domain="omnicoder", bits=bits)
        split = helper.make_node(
            "Split", [name, name + "_split"], [n.output[0] for n in nodes], name=name + "_split", axis=-1
        )
        merged[id(nodes[0])] = [fused, split]
        dropped.update(id(n) for n in nodes[1:])
    if not merged:
        return 0
    nodes = []
    for node in model.graph.node:
        if id(node) in merged:
            nodes.extend(merged[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    _replace_nodes(model, nodes)
    remove_dead_nodes(model)
    return len(dropped)


# ---- residual add + RMSNorm ---------------------------------------------------------------------------


def fuse_skip_rms_norm(model: onnx.ModelProto) -> int:
    """Add(a, b) -> RMSNormalization(gamma) as one SkipSimplifiedLayerNormalization; returns how many."""
    g = _Graph(model)
    replace: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for norm in model.graph.node:
        if norm.op_type != "RMSNormalization" or norm.domain not in ("", "ai.onnx") or len(norm.input) != 2:
            continue
        add = g.producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or id(add) in dropped:
            continue
        shapes = [g.shapes.get(name) for name in add.input]
        if _attr(norm, "axis", -1) not in (-1, len(shapes[0] or []) - 1) or _attr(norm, "stash_type", 1) != 1:
            continue
        if shapes[0] is None or shapes[0] != shapes[1] or len(shapes[0]) != 3 or add.input[1] in g.inits:
            continue
        total = add.output[0]
        others = [n for n in g.consumers.get(total, []) if n is not norm]
        fused = helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", total if (others or total in g.outputs) else ""],
            name=norm.name + "_skip",
            domain="com.microsoft",
            epsilon=_attr(norm, "epsilon", 1e-5),
        )
        replace[id(add)] = fused
        dropped.add(id(norm))
    nodes = [replace.get(id(n), n) for n in model.graph.node if id(n) not in dropped]
    _replace_nodes(model, nodes)
    _ensure_domain(model, "com.microsoft")
    return len(dropped)


# ---- attention without layout ops --------------------------------------------------------------------


def _bsh_source(g: _Graph, name: str):
    """For a BNSH attention input: (3-D source, rotary node or None, heads, head width) or None."""
    node = g.producer.get(name)
    rotary = None
    if node is not None and node.op_type == "RotaryEmbedding" and node.domain in ("", "ai.onnx"):
        rotary, node = node, g.producer.get(node.input[0])
    if node is None or node.op_type != "Transpose" or list(_attr(node, "perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.producer.get(node.input[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    source, split = g.shapes.get(reshape.input[0]), g.shapes.get(reshape.output[0])
    if not source or not split or len(source) != 3 or len(split) != 4 or split[:2] != source[:2]:
        return None
    heads, width = split[2], split[3]
    if not isinstance(heads, int) or not isinstance(width, int) or source[2] != heads * width:
        return None
    return reshape.input[0], rotary, heads, width


def attention_bsh(model: onnx.ModelProto) -> int:
    """Rewrite BNSH Attention layers to BSH (3-D) Attention + RotaryEmbedding; returns how many layers."""
    g = _Graph(model)
    added: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes to place right after it
    count = 0
    for attention in model.graph.node:
        if attention.op_type != "Attention" or attention.domain not in ("", "ai.onnx"):
            continue
        sources = [_bsh_source(g, name) for name in attention.input[:3]]
        if any(s is None for s in sources) or sources[2][1] is not None:
            continue
        y = attention.output[0]
        back = g.only_consumer(y, "Transpose")
        if back is None or list(_attr(back, "perm", [])) != [0, 2, 1, 3]:
            continue
        merge = g.only_consumer(back.output[0], "Reshape")
        out_shape = g.shapes.get(merge.output[0]) if merge is not None else None
        if not out_shape or len(out_shape) != 3:
            continue
        inputs = []
        for (source, rotary, heads, width), bnsh in zip(sources, attention.input[:3], strict=True):
            if rotary is None:
                inputs.append(source)
                continue
            rotated = bnsh + "_bsh"
            rotary.input[0] = source
            rotary.output[0] = rotated
            _set_attr(rotary, "num_heads", heads)
            inputs.append(rotated)
            if bnsh in g.outputs or any(n is not attention for n in g.consumers.get(bnsh, [])):
                shape = bnsh + "_shape"
                model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, heads, width]), shape))
                added[id(rotary)] = [
                    helper.make_node("Reshape", [rotated, shape], [bnsh + "_bshd"], name=bnsh + "_reshape"),
                    helper.make_node(
                        "Transpose", [bnsh + "_bshd"], [bnsh], name=bnsh + "_transpose", perm=[0, 2, 1, 3]
                    ),
                ]
        attention.input[0], attention.input[1], attention.input[2] = inputs
        attention.output[0] = merge.output[0]
        merge.output[0] = merge.output[0] + "_unused"
        _set_attr(attention, "q_num_heads", sources[0][2])
        _set_attr(attention, "kv_num_heads", sources[1][2])
        count += 1
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        nodes.extend(added.get(id(node), []))
    _replace_nodes(model, nodes)
    remove_dead_nodes(model)
    return count


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
    attentions = [n for n in model.graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions or any(_attr(n, "q_num_heads") is None for n in attentions):
        return 0  # attention_bsh did not apply (e.g. MLA): the caller refuses the bundle
    prefix = "shared_kv"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), prefix + "_last"),
            numpy_helper.from_array(np.array([2**62], np.int64), prefix + "_end"),
            numpy_helper.from_array(np.array([1], np.int64), prefix + "_axis"),
            numpy_helper.from_array(np.array(1, np.int32), prefix + "_one"),
        ]
    )
    lengths = [
        helper.make_node(
            "Slice",
            ["position_ids", prefix + "_last", prefix + "_end", prefix + "_axis"],
            [prefix + "_last_pos"],
            name=prefix + "_slice",
        ),
        helper.make_node("Cast", [prefix + "_last_pos"], [prefix + "_last32"], name=prefix + "_cast", to=6),
        helper.make_node(
            "Squeeze", [prefix + "_last32", prefix + "_axis"], ["seqlens_k"], name=prefix + "_seqlens"
        ),  # [B]: index of each sequence's last token = its length - 1
        helper.make_node("ReduceMax", ["seqlens_k"], [prefix + "_max"], name=prefix + "_max", keepdims=0),
        helper.make_node("Add", [prefix + "_max", prefix + "_one"], ["total_sequence_length"], name=prefix + "_total"),
    ]
    replaced = {}
    for node in attentions:
        q, k, v = node.input[:3]
        past_k, past_v = node.input[4], node.input[5]
        attrs = {
            "num_heads": _attr(node, "q_num_heads"),
            "kv_num_heads": _attr(node, "kv_num_heads"),
            "local_window_size": window if window > 0 else -1,
        }
        if _attr(node, "scale") is not None:
            attrs["scale"] = _attr(node, "scale")
        replaced[id(node)] = helper.make_node(
            "GroupQueryAttention",
            [q, k, v, past_k, past_v, "seqlens_k", "total_sequence_length"],
            list(node.output[:3]),
            name=node.name + "_gqa" if node.name else "",
            domain="com.microsoft",
            **attrs,
        )
    if rotary is not None:
        _pack_rotary(model, list(replaced.values()), rotary, prefix)
    first = min(i for i, n in enumerate(model.graph.node) if id(n) in replaced)
    nodes = [replaced.get(id(n), n) for n in model.graph.node]
    _replace_nodes(model, nodes[:first] + lengths + nodes[first:])
    _ensure_domain(model, "com.microsoft")
    remove_dead_nodes(model)
    return len(replaced)


def _pack_rotary(model: onnx.ModelProto, gqa_nodes: list, rotary: tuple, prefix: str) -> None:
    """Feed GroupQueryAttention the merged q/k/v linear's output and let it apply RoPE (see above)."""
    g = _Graph(model)
    cos, sin = (np.ascontiguousarray(t, dtype=np.float32) for t in rotary)
    model.graph.initializer.extend(
        [numpy_helper.from_array(cos, prefix + "_cos"), numpy_helper.from_array(sin, prefix + "_sin")]
    )
    for node in gqa_nodes:
        q_rot, k_rot = g.producer.get(node.input[0]), g.producer.get(node.input[1])
        if not all(r is not None and r.op_type == "RotaryEmbedding" for r in (q_rot, k_rot)):
            continue
        if any(_attr(r, "interleaved", 0) or _attr(r, "rotary_embedding_dim", 0) for r in (q_rot, k_rot)):
            continue
        split = g.producer.get(q_rot.input[0])
        if (
            split is None
            or split.op_type != "Split"
            or list(split.output) != [q_rot.input[0], k_rot.input[0], node.input[2]]
        ):
            continue
        past_and_lengths = list(node.input[3:7])
        del node.input[:]
        node.input.extend([split.input[0], "", "", *past_and_lengths, prefix + "_cos", prefix + "_sin"])
        node.attribute.append(helper.make_attribute("do_rotary", 1))


def _ensure_domain(model: onnx.ModelProto, domain: str) -> None:
    used = any(n.domain == domain for n in model.graph.node)
    if used and all(o.domain != domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))


def apply_fusions(model: onnx.ModelProto) -> dict[str, int]:
    """The float-graph fusions (run after `merge_sibling_quant_linears` and the quantized-linear lowering)."""
    return {"skip_rms_norm": fuse_skip_rms_norm(model), "attention_bsh": attention_bsh(model)}
