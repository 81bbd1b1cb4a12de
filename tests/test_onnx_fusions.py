"""export/onnx_fusions.py: what the default ONNX graph looks like, and that the passes leave other graphs alone.
(Numerical parity of the fused graphs with PyTorch is in test_onnx_export.py::test_parity_with_pytorch.)"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from omnicoder.export.onnx_fusions import attention_bsh, fuse_skip_rms_norm, merge_sibling_quant_linears
from omnicoder.runtimes.bundle import open_bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.kv_paging import PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionPolicy
from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
from onnx import TensorProto, helper, numpy_helper

from omnicoder.errors import OmniCoderError


def raw_ops(path) -> Counter:
    """Op counts of a bundle's graph, leaving out ops on weights only (e.g. the tied LM head's Transpose)."""
    graph = onnx.load(str(path / "model.onnx")).graph
    weights = {i.name for i in graph.initializer}
    return Counter(n.op_type for n in graph.node if not set(n.input) <= weights)


def test_default_graph_has_no_layout_ops_and_fused_norms(bundles):
    model, _, path = bundles["gqa-fp32-lean"]
    layers = model.config.n_layers
    ops, fused = raw_ops(path), open_bundle(path).graph["fusions"]
    unfused = raw_ops(bundles["gqa-fp32-unfused"][2])
    assert ops["Transpose"] == ops["Reshape"] == 0 and unfused["Transpose"] >= 4 * layers
    # every norm after a residual Add (all but the first one; the MTP heads have their own)
    assert ops["SkipSimplifiedLayerNormalization"] == fused["skip_rms_norm"] >= 2 * layers
    assert ops["RMSNormalization"] + fused["skip_rms_norm"] == unfused["RMSNormalization"]
    assert ops["Add"] == unfused["Add"] - fused["skip_rms_norm"]
    assert ops["Attention"] == fused["attention_bsh"] == layers
    graph = onnx.load(str(path / "model.onnx")).graph
    for node in (n for n in graph.node if n.op_type == "Attention"):
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["q_num_heads"] == model.config.n_heads and attrs["kv_num_heads"] == model.config.n_kv_heads
    assert open_bundle(bundles["gqa-fp32-unfused"][2]).graph["fusions"] == {}


def test_siblings_share_one_quantized_matmul(bundles):
    model, _, path = bundles["gqa-int4"]
    manifest = open_bundle(path).manifest
    layers = model.config.n_layers
    # per layer q/k/v -> 1 and gate/up -> 1; the MTP heads read the same hidden state as the LM head
    assert manifest["graph"]["fusions"]["merged_linears"] >= 3 * layers
    assert raw_ops(path)["Split"] >= 2 * layers


def test_query_outputs_are_on_request(bundles):
    lean = open_bundle(bundles["gqa-fp32-lean"][2])
    assert "query" not in lean.graph["kv"] and not any(o["name"].startswith("query.") for o in lean.graph["outputs"])
    full = open_bundle(bundles["gqa-fp32"][2])
    assert full.graph["kv"]["query"] == "query.{layer}"
    session = create_session(lean)
    with pytest.raises(OmniCoderError, match="--query-outputs"):
        GraphBackend(lean, OnnxProgram(session), paging=PagingPolicy(page_len=4, window=8, predicted_pages=1))
    with pytest.raises(OmniCoderError, match="--query-outputs"):
        GraphBackend(lean, OnnxProgram(session), retention=RetentionPolicy(budget_bytes=10_000, policy="h2o"))


# ---- the passes on hand-built graphs: what must not be touched ---------------------------------------------


def _model(nodes, inputs, outputs, inits=(), value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_skip_norm_needs_two_equal_shapes():
    gamma = numpy_helper.from_array(np.ones(8, np.float32), "gamma")
    bias = numpy_helper.from_array(np.ones(8, np.float32), "bias")
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["s"]),  # a broadcast bias, not a residual
        helper.make_node("RMSNormalization", ["s", "gamma"], ["y"], axis=-1),
    ]
    model = _model(nodes, [_info("x", ["b", "t", 8])], [_info("y", None)], [gamma, bias], [_info("s", ["b", "t", 8])])
    assert fuse_skip_rms_norm(model) == 0 and [n.op_type for n in model.graph.node] == ["Add", "RMSNormalization"]

    nodes[0].input[1] = "r"  # a residual of the same shape is fused; the sum stays available to a second reader
    nodes.append(helper.make_node("Relu", ["s"], ["z"]))
    model = _model(
        nodes,
        [_info("x", ["b", "t", 8]), _info("r", ["b", "t", 8])],
        [_info("y", None), _info("z", None)],
        [gamma],
        [_info("s", ["b", "t", 8])],
    )
    assert fuse_skip_rms_norm(model) == 1
    fused = model.graph.node[0]
    assert fused.op_type == "SkipSimplifiedLayerNormalization" and list(fused.output) == ["y", "", "", "s"]


def test_attention_with_a_second_reader_of_its_output_is_left_alone():
    shape = numpy_helper.from_array(np.array([0, 0, 2, 4]), "shape")
    merge = numpy_helper.from_array(np.array([0, 0, 8]), "merge")
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("Reshape", [name, "shape"], [name + "4"]),
            helper.make_node("Transpose", [name + "4"], [name + "t"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Attention", ["qt", "kt", "vt"], ["y"], is_causal=1),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["yt", "merge"], ["out"]),
        helper.make_node("Relu", ["y"], ["other"]),
    ]
    infos = [_info(n + "4", ["b", "t", 2, 4]) for n in "qkv"] + [_info("out", ["b", "t", 8])]
    model = _model(
        nodes,
        [_info(n, ["b", "t", 8]) for n in "qkv"],
        [_info("out", None), _info("other", None)],
        [shape, merge],
        infos,
    )
    assert attention_bsh(model) == 0
    model.graph.node.pop()  # without the second reader the layer becomes 3-D
    del model.graph.output[1]
    assert attention_bsh(model) == 1
    assert Counter(n.op_type for n in model.graph.node) == Counter(Attention=1)


def test_quant_linears_with_different_inputs_are_not_merged():
    codes = [numpy_helper.from_array(np.zeros((4, 32), np.int8), f"w{i}") for i in range(3)]
    scales = [numpy_helper.from_array(np.ones((4, 1), np.float32), f"s{i}") for i in range(3)]
    nodes = [
        helper.make_node("QuantLinear", ["x", "w0", "s0"], ["a"], domain="omnicoder", bits=4),
        helper.make_node("QuantLinear", ["x", "w1", "s1"], ["b"], domain="omnicoder", bits=4),
        helper.make_node("QuantLinear", ["a", "w2", "s2"], ["c"], domain="omnicoder", bits=4),
    ]
    model = _model(
        nodes, [_info("x", ["t", 32])], [_info("b", None), _info("c", None)], codes + scales, [_info("a", ["t", 4])]
    )
    assert merge_sibling_quant_linears(model) == 1
    ops = [(n.op_type, list(n.output)) for n in model.graph.node]
    assert ops[0][0] == "QuantLinear" and ops[1] == ("Split", ["a", "b"]) and ops[2] == ("QuantLinear", ["c"])
    inits = {i.name: i for i in model.graph.initializer}
    assert list(inits["fused_linear0_codes"].dims) == [8, 32] and "w0" not in inits and "w2" in inits
