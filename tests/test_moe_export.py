"""MoE models through the ONNX exporter (issue #21): one graph for prefill and decode with the routed experts as
com.microsoft.MoE / QMoE (routing in standard ops) or standard ops only (gather / dense); logits parity with
PyTorch over a prefill and decode steps (MLA + MoE and GQA + MoE), int4 experts (QMoE, the router and the shared
expert's one-output gate kept fp32), the manifest's graph.moe and the refusals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omnicoder.export.onnx_moe import resolve_lowering

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.moe import moe_layers, set_moe_form
from omnicoder.presets import preset
from omnicoder.quant import QuantExpertBank, quantize_experts, quantize_linears
from tests.conftest import export_bundle

PREFILL, STEPS = 8, 8
GQA_MOE = dict(  # GQA attention, sigmoid gating with a choice bias, groups and a routed scale, every layer MoE
    moe_experts=8,
    moe_top_k=2,
    moe_hidden=32,
    moe_gating="sigmoid",
    moe_norm_topk=True,
    moe_score_bias=True,
    moe_n_group=4,
    moe_topk_group=2,
    moe_routed_scale=2.0,
    moe_shared_hidden=32,
)


def moe_model(name: str, seed: int = 0) -> OmniCoder:
    """A tiny MoE model whose routing matters: router and experts drawn wider than the init, a choice bias."""
    torch.manual_seed(seed)
    config = preset("test-moe") if name == "mla" else OmniCoderConfig(**{**preset("test-gqa").to_dict(), **GQA_MOE})
    model = OmniCoder(config.validate()).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "router" in param_name or "experts" in param_name:
                std = 0.5 if "router" in param_name else 0.15
                param.copy_(std * torch.randn(param.shape, generator=generator))
        for layer in moe_layers(model):
            if layer.router.score_bias is not None:
                layer.router.score_bias.uniform_(-0.1, 0.1, generator=generator)
    return model


CALLS = [(0, PREFILL)] + [(i, i + 1) for i in range(PREFILL, PREFILL + STEPS)]


@torch.no_grad()
def reference_logits(model: OmniCoder, ids: torch.Tensor) -> np.ndarray:
    past, outs = None, []
    for start, end in CALLS:
        out = model(ids[:, start:end], torch.arange(start, end).expand(ids.shape[0], -1), past)
        past, outs = out.present_kv, [*outs, out.logits]
    return torch.cat(outs, dim=1).numpy()


def graph_logits(path, ids: np.ndarray) -> np.ndarray:
    """The bundle's graph over the same calls (prefill, then one token a step), KV fed back."""
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    kv = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    past = {i.name: np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32) for i in kv}
    names = [o.name for o in session.get_outputs()]
    got = []
    for start, end in CALLS:
        pos = np.ascontiguousarray(np.broadcast_to(np.arange(start, end), (ids.shape[0], end - start)))
        feeds = {"input_ids": ids[:, start:end], "position_ids": pos.astype(np.int64), **past}
        out = dict(zip(names, session.run(None, feeds), strict=True))
        got.append(out["logits"])
        past = {i.name: out[i.name.replace("past_key_values", "present")] for i in kv}
    return np.concatenate(got, axis=1)


def op_counts(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path / "model.onnx")).graph.node)


IDS = torch.randint(0, 256, (2, PREFILL + STEPS), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def mla_fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe") / "mla-fp32"
    manifest = export_bundle(moe_model("mla"), path, weights="fp32")
    return path, manifest


def test_mla_moe_fp32_matches_pytorch_with_one_moe_node_per_layer(mla_fp32):
    path, manifest = mla_fp32
    reference = moe_model("mla")
    want = reference_logits(reference, IDS)
    assert np.abs(graph_logits(path, IDS.numpy()) - want).max() <= 1e-4
    counts = op_counts(path)
    assert counts["MoE"] == len(moe_layers(reference)) == 1 and counts["TopK"] == 1
    assert counts["Einsum"] == 4  # MLA's k_up / v_up only: no expert einsums left
    moe = manifest["graph"]["moe"]
    assert (moe["lowering"], moe["op"], moe["layers"]) == ("ort", "com.microsoft.MoE", [1])
    assert (moe["experts"], moe["top_k"], moe["expert_hidden"]) == (8, 2, 32)
    assert moe["bytes_per_expert"] == 3 * 32 * 64 * 4  # gate + up + down, fp32
    graph_inits = {i.name for i in onnx.load(str(path / "model.onnx")).graph.initializer}
    assert set(moe["tensors"][0]["initializers"]) <= graph_inits and len(moe["tensors"][0]["initializers"]) == 2


def test_routing_changes_the_output(mla_fp32):
    """The parity above is not vacuous: another draw of the router gives other logits."""
    want = reference_logits(moe_model("mla"), IDS)
    other = moe_model("mla")
    with torch.no_grad():
        moe_layers(other)[0].router.weight.mul_(-1)
    assert np.abs(reference_logits(other, IDS) - want).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("lowering", ["ort", "gather", "dense"])
def test_gqa_moe_fp32_matches_pytorch_in_every_lowering(tmp_path, lowering):
    model = moe_model("gqa")
    manifest = export_bundle(model, tmp_path / lowering, weights="fp32", moe_lowering=lowering)
    want = reference_logits(moe_model("gqa"), IDS)
    assert np.abs(graph_logits(tmp_path / lowering, IDS.numpy()) - want).max() <= 1e-4
    counts = op_counts(tmp_path / lowering)
    assert counts["MoE"] == (2 if lowering == "ort" else 0)
    if lowering == "ort":
        assert [t["layer"] for t in manifest["graph"]["moe"]["tensors"]] == [0, 1]
    assert manifest["graph"]["moe"]["lowering"] == lowering


def test_int4_experts_are_qmoe_with_the_router_and_gate_in_fp32(tmp_path):
    """accuracy_level 0 (fp32 activations) everywhere: the graph computes the quantized model's own grid."""
    model = moe_model("mla")
    manifest = export_bundle(model, tmp_path / "int4", weights="int4", int4_format="matmulnbits", accuracy_level=0)
    assert isinstance(moe_layers(model)[0].experts, QuantExpertBank)  # quantized in place, like the linears
    got = graph_logits(tmp_path / "int4", IDS.numpy())
    assert np.abs(got - reference_logits(model, IDS)).max() <= 1e-4
    delta = np.abs(got - reference_logits(moe_model("mla"), IDS)).max()
    assert 1e-3 < delta < 1.0  # int4 moves the logits, within reason (about 0.37 on these wide random weights)
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph
    assert Counter(n.op_type for n in graph.node)["QMoE"] == 1
    inits = {i.name: i for i in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "QMoE")
    assert inits[node.input[2]].data_type == onnx.TensorProto.UINT8
    assert list(inits[node.input[2]].dims) == [8, 64, 32] and list(inits[node.input[3]].dims) == [8, 64, 2]
    float_names = {n for n, i in inits.items() if i.data_type == onnx.TensorProto.FLOAT}
    assert any(n.endswith("router.weight") for n in float_names)
    assert any(n.endswith("shared_gate.weight") for n in float_names)
    moe = manifest["graph"]["moe"]
    assert moe["op"] == "com.microsoft.QMoE" and moe["expert_weights"] == "int4" and moe["block_size"] == 32
    assert moe["bytes_per_expert"] == 3 * 32 * 64 // 2 + 3 * 32 * 2 * 4  # nibbles + one fp32 scale per 32


def test_quant_expert_bank_computes_with_its_blocks():
    model = moe_model("gqa")
    layer = moe_layers(model)[0]
    x = torch.randn(1, 12, 64)
    assert quantize_experts(model) == ["layers.0.mlp.experts", "layers.1.mlp.experts"]
    bank = layer.experts
    assert bank.gate_proj_codes.dtype == torch.int8 and bank.gate_proj_scales.shape == (8, 32, 2)
    assert int(bank.gate_proj_codes.min()) >= -8 and int(bank.gate_proj_codes.max()) <= 7
    with torch.no_grad():
        outs = []
        for form in ("loop", "gather", "dense"):
            set_moe_form(model, form)
            outs.append(layer(x))
    assert all((o - outs[0]).abs().max().item() < 1e-5 for o in outs)
    names = quantize_linears(moe_model("mla"), "int4")
    assert "layers.1.mlp.shared.gate_proj" in names and "layers.1.mlp.shared_gate" not in names  # 1 output: fp32


def test_lowering_choice_and_refusals():
    assert resolve_lowering(moe_model("mla"), "auto") == "ort"
    assert resolve_lowering(OmniCoder(preset("test-gqa")), "auto") is None
    gelu = OmniCoder(OmniCoderConfig(**{**preset("test-moe").to_dict(), "mlp_activation": "gelu_tanh"}).validate())
    assert resolve_lowering(gelu, "auto") == "gather"
    with pytest.raises(OmniCoderError, match="no gelu_tanh experts"):
        resolve_lowering(gelu, "ort")
    with pytest.raises(OmniCoderError, match="--moe-lowering sparse is unknown"):
        resolve_lowering(gelu, "sparse")
