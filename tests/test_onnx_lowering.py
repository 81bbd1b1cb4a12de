"""The exporter's memory and speed lowerings: float zero points as MatMulNBits + offsets, logits_to_keep,
external weights for large graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from omnicoder.export.onnx_logits import LOGITS_TO_KEEP
from omnicoder.export.onnx_quant import lower_quant_linears
from onnx import TensorProto, helper, numpy_helper


def _quant_linear_model(codes, scales, zeros) -> onnx.ModelProto:
    n, k = codes.shape
    node = helper.make_node("QuantLinear", ["x", "w", "s", "z"], ["y"], domain="omnicoder", bits=4)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
        [
            numpy_helper.from_array(codes, "w"),
            numpy_helper.from_array(scales, "s"),
            numpy_helper.from_array(zeros, "z"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("omnicoder", 1)])


def test_float_zero_points_lower_to_matmulnbits_plus_offsets():
    """A GGUF Q4_1 block (w = d * q + m, zero point -m / d, not an integer) computes the same product through
    the fast MatMulNBits kernel plus a per-block offset term, and keeps no float zero-point input."""
    rng = np.random.default_rng(0)
    n, k = 48, 96
    codes = rng.integers(0, 16, (n, k)).astype(np.int8)
    scales = (rng.random((n, k // 32)) * 0.05 + 0.01).astype(np.float16).astype(np.float32)  # half, as in a file
    minimum = (rng.standard_normal((n, k // 32)) * 0.2).astype(np.float16).astype(np.float32)
    zeros = (-minimum / scales).astype(np.float32)
    model = _quant_linear_model(codes, scales, zeros)
    assert lower_quant_linears(model) == 1
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMul") == 2 and "Cast" in ops  # fp16-exact d, m
    mnb = next(node for node in model.graph.node if node.op_type == "MatMulNBits")
    assert len(mnb.input) == 3  # no zero-point input: the default zero point 8, the fast kernel
    halves = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(halves) == 2  # the file's d and m stay half precision in the bundle
    x = rng.standard_normal((2, 5, k)).astype(np.float32)
    weight = (codes.reshape(n, -1, 32) * scales[..., None] + minimum[..., None]).reshape(n, k)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ weight.T
    # MatMulNBits (accuracy level 4) quantizes x to int8 per block; the offsets are exact
    assert np.abs(got - expected).max() < 2e-2 * np.abs(expected).max()


def test_integer_zero_points_stay_packed_uint4():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (32, 64)).astype(np.int8)
    zeros = rng.integers(0, 16, (32, 2)).astype(np.float32)
    model = _quant_linear_model(codes, np.full((32, 2), 0.1, np.float32), zeros)
    lower_quant_linears(model)
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits"]
    assert len(model.graph.node[0].input) == 4


def _backend(path):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(path)
    return bundle, GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1)))


@pytest.mark.parametrize("name", ["gqa-int4", "mla-fp32", "gqa-fp16"])
def test_logits_to_keep_runs_the_head_on_the_last_position(bundles, name):
    """The graph takes an optional logits_to_keep (default 0: every position); the runner's step feeds 1 and
    gets the same last-position logits as a call that returns every position's."""
    bundle, backend = _backend(bundles[name][2])
    assert bundle.graph["logits_to_keep"] == LOGITS_TO_KEEP
    assert LOGITS_TO_KEEP not in {spec["name"] for spec in bundle.graph["inputs"]}
    ids = [5, 17, 99, 3, 42, 8, 250]
    backend.reset()
    every = backend.step_all(ids, list(range(len(ids))))
    backend.reset()
    result = backend.run(np.array([ids]), np.array([list(range(len(ids)))]), backend.cache.feeds(), last_only=True)
    assert every.shape[0] == len(ids) and result["logits"].shape[1] == 1
    np.testing.assert_allclose(result["logits"][0, -1], every[-1], rtol=1e-4, atol=1e-4)


def test_large_graphs_keep_their_weights_in_external_data(tiny_model, tmp_path, monkeypatch):
    """Above the threshold the weights go to model.onnx.data (mapped by onnxruntime, listed and checksummed in
    the manifest); the bundle still runs."""
    import omnicoder.export.onnx_export as onnx_export

    from tests.conftest import export_bundle

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)
    manifest = export_bundle(tiny_model, tmp_path / "b", weights="fp32")
    assert "model.onnx.data" in manifest["files"]
    assert (tmp_path / "b" / "model.onnx").stat().st_size < manifest["files"]["model.onnx.data"]["bytes"]
    _, backend = _backend(tmp_path / "b")
    backend.reset()
    assert np.isfinite(backend.step([1, 2, 3], [0, 1, 2])).all()
