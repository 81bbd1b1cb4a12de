"""The fusions of export/onnx_fusions.py as onnxscript rewrite rules over an onnx_ir graph.

onnxscript's own rules (`onnxscript.rewriter.ort_fusions`) match the decomposed graphs of torch's generic exporter
(SimplifiedLayerNormalization, Slice-packed QKV, attention written out in MatMul/Softmax); the converter here
already emits ONNX's RMSNormalization, RotaryEmbedding and Attention, so these rules match those ops instead.
Each rule checks what the fused op needs (shapes, attributes) and leaves anything else as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.pattern import MatchResult, RewriteRuleClassBase

BNSH = [0, 2, 1, 3]  # the perm between [batch, seq, heads, width] and [batch, heads, seq, width]
LEFT_OFF = "omnicoder.left_off"  # meta key of an optional output the node does not produce ("" in ONNX)
# FEWER_OUTPUTS: onnxscript 0.7's matcher reports a node with fewer outputs than its pattern node as a match, with
# the bindings made so far; the checks below count the outputs of such nodes first.


def apply_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule]) -> int:
    """Apply `rules` once over the graph; returns how many matches were rewritten.

    The rewriter names every unnamed value when it is done; outputs a node leaves off must stay "", else
    onnxruntime computes them."""
    for node in model.graph:
        leave_off(*(value for value in node.outputs if not value.name))
    count = pattern.RewriteRuleSet(rules).apply_to_model(model)
    for node in model.graph:
        for value in node.outputs:
            if value.meta.get(LEFT_OFF):
                value.name = ""
    return count


def leave_off(*values: ir.Value) -> None:
    for value in values:
        value.meta[LEFT_OFF] = True


def dims(value: ir.Value | None) -> tuple | None:
    """The value's shape (ints, dim names, None where unknown), or None without one."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in value.shape)


def _only_reader(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


# ---- residual add + RMSNorm ---------------------------------------------------------------------------


class SkipRmsNorm(RewriteRuleClassBase):
    """Add(a, b) -> RMSNormalization(gamma) as one com.microsoft.SkipSimplifiedLayerNormalization, for two
    residual inputs of one 3-D shape; its fourth output is the sum, for the other readers if there are any."""

    def pattern(self, op, a, b, gamma):
        total = op.Add(a, b, _outputs=["total"])
        return op.RMSNormalization(total, gamma, _outputs=["y"]), total

    def check(self, context, a, b, y, **_) -> MatchResult:
        result, norm, shape = MatchResult(), y.producer(), dims(a)
        if norm.attributes.get_int("axis", -1) not in (-1, len(shape or ()) - 1):
            return result.fail("normalizes another axis than the last")
        if norm.attributes.get_int("stash_type", 1) != 1:
            return result.fail("stash_type other than float")
        if shape is None or shape != dims(b) or len(shape) != 3 or b.is_initializer():
            return result.fail("not two residual inputs of one 3-D shape")
        return result

    def rewrite(self, op, a, b, gamma, y, total, **_):
        epsilon = y.producer().attributes.get_float("epsilon", 1e-5)
        fused = op.SkipSimplifiedLayerNormalization(a, b, gamma, epsilon=epsilon, _domain="com.microsoft", _outputs=4)
        leave_off(fused[1], fused[2], *([fused[3]] if _only_reader(total) else []))  # mean, inverse std dev: unused
        return fused[0], fused[3]


SKIP_RMS_NORM = [SkipRmsNorm.rule()]


# ---- attention without layout ops --------------------------------------------------------------------


class AttentionBsh(RewriteRuleClassBase):
    """`Reshape -> Transpose (-> RotaryEmbedding)` into each of q/k/v of an Attention and `Transpose -> Reshape` out
    of it become 3-D (BSH) RotaryEmbedding (`num_heads`) and Attention (`q_num_heads` / `kv_num_heads`).
    A rotated q/k that something else reads (e.g. the `query.{i}` output) is reshaped back to BNSH for it.
    One rule per (q rotated, k rotated, Attention outputs); the nodes left unread are removed afterwards."""

    def __init__(self, rotary_q: bool, rotary_k: bool, outputs: int) -> None:
        super().__init__(f"attention_bsh_q{int(rotary_q)}k{int(rotary_k)}_out{outputs}", remove_nodes=False)
        self.rotary = {"q": rotary_q, "k": rotary_k, "v": False}
        self.outputs = outputs

    def pattern(self, op, q_src, q_shape, k_src, k_shape, v_src, v_shape, merge_shape):
        sources = {"q": (q_src, q_shape), "k": (k_src, k_shape), "v": (v_src, v_shape)}
        heads, rotated = [], []
        for name, (source, shape) in sources.items():
            bnsh = op.Transpose(op.Reshape(source, shape, _outputs=[f"{name}_split"]), perm=BNSH)
            if self.rotary[name]:
                bnsh = op.RotaryEmbedding(bnsh, _allow_other_inputs=True, _outputs=[f"{name}_rot"])
                rotated.append(bnsh)
            heads.append(bnsh)
        names = ["y", *(f"present{i}" for i in range(1, self.outputs))]
        outputs = op.Attention(*heads, _allow_other_inputs=True, _outputs=names)
        y, present = (outputs, []) if self.outputs == 1 else (outputs[0], list(outputs[1:]))
        out = op.Reshape(op.Transpose(y, perm=BNSH, _outputs=["y_bsnh"]), merge_shape, _outputs=["out"])
        return out, *present, *rotated

    def check(self, context, **bound) -> MatchResult:
        result = MatchResult()
        if len(bound["y"].producer().outputs) != self.outputs:  # see FEWER_OUTPUTS
            return result.fail("another number of Attention outputs")
        for name in ("q", "k", "v"):
            if _heads(bound[f"{name}_src"], bound[f"{name}_split"]) is None:
                return result.fail(f"{name}: not a [B, S, heads * width] -> [B, S, heads, width] reshape")
        if not (_only_reader(bound["y"]) and _only_reader(bound["y_bsnh"])):
            return result.fail("the BNSH output has other readers")
        if len(dims(bound["out"]) or ()) != 3:
            return result.fail("the merged output is not 3-D")
        return result

    def rewrite(self, op, y, **bound):
        attention, inputs, rotated = y.producer(), [], []
        for name in ("q", "k", "v"):
            source, (heads, width) = bound[f"{name}_src"], _heads(bound[f"{name}_src"], bound[f"{name}_split"])
            if self.rotary[name]:
                bnsh = bound[f"{name}_rot"]
                rotary = bnsh.producer()
                attrs = {**rotary.attributes, "num_heads": heads}
                source = op.RotaryEmbedding(source, *rotary.inputs[1:], **attrs, _outputs=[bnsh.name + "_bsh"])
                shape = op.initializer(ir.tensor(np.array([0, 0, heads, width], np.int64)), bnsh.name + "_shape")
                split = op.Reshape(source, shape, _outputs=[bnsh.name + "_bshd"])
                rotated.append(op.Transpose(split, perm=BNSH))  # for other readers of the BNSH rotation, if any
            inputs.append(source)
        q_heads = _heads(bound["q_src"], bound["q_split"])[0]
        kv_heads = _heads(bound["k_src"], bound["k_split"])[0]
        attrs = {**attention.attributes, "q_num_heads": q_heads, "kv_num_heads": kv_heads}
        outputs = op.Attention(*inputs, *attention.inputs[3:], **attrs, _outputs=self.outputs)
        return *(outputs if self.outputs > 1 else [outputs]), *rotated


def _heads(source: ir.Value, split: ir.Value) -> tuple[int, int] | None:
    """(heads, width) of a [B, S, heads * width] -> [B, S, heads, width] reshape, or None."""
    flat, four = dims(source), dims(split)
    if not flat or not four or len(flat) != 3 or len(four) != 4 or four[:2] != flat[:2]:
        return None
    heads, width = four[2], four[3]
    if not isinstance(heads, int) or not isinstance(width, int) or flat[2] != heads * width:
        return None
    return heads, width


ATTENTION_BSH = [
    AttentionBsh.rule(rotary_q=q, rotary_k=k, outputs=n) for n in (3, 1) for q in (True, False) for k in (True, False)
]


# ---- --kv-io shared: GroupQueryAttention over in-place buffers ---------------------------------------


class SharedKvAttention(RewriteRuleClassBase):
    """A 3-D Attention over past/present -> com.microsoft.GroupQueryAttention over the same past buffers, with
    `seqlens_k` and `total_sequence_length` (computed once from position_ids by the caller) for the lengths."""

    def __init__(self, window: int, lengths: tuple[ir.Value, ir.Value]) -> None:
        super().__init__("shared_kv_attention")
        self.window, self.lengths = window, lengths

    def pattern(self, op, q, k, v):
        return op.Attention(q, k, v, _allow_other_inputs=True, _outputs=["y", "present_key", "present_value"])

    def check(self, context, y, **_) -> MatchResult:
        node = y.producer()
        if len(node.outputs) != 3:  # see FEWER_OUTPUTS
            return MatchResult().fail("not y, present key and present value")
        if node.attributes.get_int("q_num_heads") is None or len(node.inputs) < 6:
            return MatchResult().fail("not a 3-D Attention over past keys and values")
        return MatchResult()

    def rewrite(self, op, q, k, v, y, **_):
        node = y.producer()
        attrs = {
            "num_heads": node.attributes.get_int("q_num_heads"),
            "kv_num_heads": node.attributes.get_int("kv_num_heads"),
            "local_window_size": self.window if self.window > 0 else -1,
        }
        if "scale" in node.attributes:
            attrs["scale"] = node.attributes["scale"]
        past = node.inputs[4:6]
        return op.GroupQueryAttention(q, k, v, *past, *self.lengths, **attrs, _domain="com.microsoft", _outputs=3)


class PackedRotaryAttention(RewriteRuleClassBase):
    """GroupQueryAttention over RotaryEmbedding(q), RotaryEmbedding(k) and v of one Split (the merged q/k/v
    linear) takes the Split's input packed and rotates inside (`do_rotary`, with the model's cos/sin tables)."""

    def __init__(self, tables: tuple[ir.Value, ir.Value]) -> None:
        super().__init__("packed_rotary_attention", remove_nodes=False)
        self.tables = tables

    def pattern(self, op, packed, past_key, past_value, seqlens_k, total_length):
        q, k, v = op.Split(packed, _allow_other_inputs=True, _outputs=["q", "k", "v"])
        q_rot = op.RotaryEmbedding(q, _allow_other_inputs=True, _outputs=["q_rot"])
        k_rot = op.RotaryEmbedding(k, _allow_other_inputs=True, _outputs=["k_rot"])
        inputs = (q_rot, k_rot, v, past_key, past_value, seqlens_k, total_length)
        return op.GroupQueryAttention(*inputs, _domain="com.microsoft", _outputs=["y", "present_key", "present_value"])

    def check(self, context, **bound) -> MatchResult:
        if len(bound["q"].producer().outputs) != 3 or len(bound["y"].producer().outputs) != 3:  # see FEWER_OUTPUTS
            return MatchResult().fail("not a Split into q, k and v, or not y, present key and present value")
        for rotary in (bound["q_rot"].producer(), bound["k_rot"].producer()):
            if rotary.attributes.get_int("interleaved", 0) or rotary.attributes.get_int("rotary_embedding_dim", 0):
                return MatchResult().fail("interleaved or partial rotation")
        return MatchResult()

    def rewrite(self, op, packed, past_key, past_value, seqlens_k, total_length, y, **_):
        attrs = {**y.producer().attributes, "do_rotary": 1}
        inputs = (packed, None, None, past_key, past_value, seqlens_k, total_length, *self.tables)
        return op.GroupQueryAttention(*inputs, **attrs, _domain="com.microsoft", _outputs=3)
