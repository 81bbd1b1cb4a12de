"""Per-layer attention and family features through the exporters: ONNX parity (fp32), int4, and the refusals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.io_contract import kv_names
from omnicoder.model import OmniCoder
from tests.conftest import export_bundle
from tests.family_support import ORIGINAL_CONTEXT, WINDOW, family_config, spread_weights

PREFILL, STEPS = 8, 8  # positions 0..15: across longrope's switch (12) and beyond the window (4)


def family_model(seed: int = 0) -> OmniCoder:
    torch.manual_seed(seed)
    return spread_weights(OmniCoder(family_config()).eval(), seed)


@torch.no_grad()
def reference_logits(model: OmniCoder, ids: torch.Tensor) -> list[torch.Tensor]:
    """Eager logits of the prefill chunk and each decode step, with the cache (longrope decides per call)."""
    past, outs = None, []
    for start, end in [(0, PREFILL)] + [(i, i + 1) for i in range(PREFILL, PREFILL + STEPS)]:
        pos = torch.arange(start, end).expand(ids.shape[0], -1)
        out = model(ids[:, start:end], pos, past)
        past = out.present_kv
        outs.append(out.logits)
    return outs


def run_graph(path, config, ids: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = kv_names(config)
    width = config.head_dim
    past = {n: np.zeros((ids.shape[0], config.kv_heads, 0, width), np.float32) for n in inputs}
    names = [o.name for o in session.get_outputs()]
    got = []
    for start, end in [(0, PREFILL)] + [(i, i + 1) for i in range(PREFILL, PREFILL + STEPS)]:
        pos = np.broadcast_to(np.arange(start, end), (ids.shape[0], end - start)).astype(np.int64)
        feeds = {"input_ids": ids[:, start:end], "position_ids": np.ascontiguousarray(pos), **past}
        out = dict(zip(names, session.run(None, feeds), strict=True))
        got.append(out["logits"])
        past = {i: out[o] for i, o in zip(inputs, outputs, strict=True)}
    return got


@pytest.fixture(scope="module")
def family_bundle(tmp_path_factory):
    model = family_model()
    reference = family_model()
    path = tmp_path_factory.mktemp("family") / "fp32"
    export_bundle(model, path, weights="fp32")
    return reference, path


def test_onnx_fp32_matches_pytorch_across_the_switch_and_window(family_bundle):
    reference, path = family_bundle
    assert PREFILL + STEPS > ORIGINAL_CONTEXT and PREFILL > WINDOW
    ids = torch.randint(0, 256, (2, PREFILL + STEPS), generator=torch.Generator().manual_seed(3))
    want = reference_logits(reference, ids)
    got = run_graph(path / "model.onnx", reference.config, ids.numpy())
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert np.abs(g - w.numpy()).max() <= 1e-4, f"call {step}"
    assert max(np.abs(w.numpy()).max() for w in want) > 1.0  # the final soft-cap (3.0) is in play


def test_onnx_graph_has_one_attention_per_layer_with_its_own_settings(family_bundle):
    _, path = family_bundle
    graph = onnx.load(str(path / "model.onnx")).graph
    attentions = [n for n in graph.node if n.op_type == "Attention"]
    assert len(attentions) == 4
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in attentions]
    assert all(abs(a["softcap"] - 4.0) < 1e-6 and abs(a["scale"] - 0.3) < 1e-6 for a in attrs)
    assert [bool(a.get("is_causal", 0)) for a in attrs] == [False, True, False, True]  # sliding layers: a mask
    assert Counter(n.op_type for n in graph.node)["Tanh"] >= 1  # the final logit soft-cap


def test_int4_export_runs(tmp_path):
    model = family_model()
    export_bundle(model, tmp_path / "int4", weights="int4")
    session = ort.InferenceSession(str(tmp_path / "int4" / "model.onnx"), providers=["CPUExecutionProvider"])
    config = model.config
    feeds = {
        "input_ids": np.arange(5, dtype=np.int64)[None],
        "position_ids": np.arange(5, dtype=np.int64)[None],
        **{n: np.zeros((1, config.kv_heads, 0, config.head_dim), np.float32) for n in kv_names(config)[0]},
    }
    logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = model(torch.arange(5)[None], torch.arange(5)[None]).logits.numpy()  # the quantized model core
    assert np.isfinite(logits).all() and np.abs(logits - want).max() < 0.1 * np.abs(want).max()


def test_shared_kv_io_refuses_per_layer_settings(tmp_path):
    with pytest.raises(OmniCoderError, match="--kv-io shared cannot carry sliding and full attention layers"):
        export_bundle(family_model(), tmp_path / "shared", weights="fp32", kv_io="shared")


@pytest.mark.slow  # about 20 s
@torch.no_grad()
def test_ort_group_query_attention_carries_windows_and_softcap(tmp_path):
    """--attention ort-gqa: each layer's com.microsoft.GroupQueryAttention has its window and soft-cap."""
    model, reference = family_model(), family_model()
    export_bundle(model, tmp_path / "gqa", weights="fp32", attention="ort-gqa")
    graph = onnx.load(str(tmp_path / "gqa" / "model.onnx")).graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert [a["local_window_size"] for a in attrs] == [WINDOW, -1, WINDOW, -1]
    ids = torch.randint(0, 256, (1, PREFILL + STEPS), generator=torch.Generator().manual_seed(4))
    want = reference_logits(reference, ids)
    got = run_graph(tmp_path / "gqa" / "model.onnx", reference.config, ids.numpy())
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert np.abs(g - w.numpy()).max() <= 1e-4, f"call {step}"


# ---- Core ML: the traced wrappers (fast), the converted programs (slow) ------------------------------------

CAPACITY = 32


@torch.no_grad()
def test_coreml_wrappers_match_the_model():
    """Core ML's slot classes (StateSlot, IOKVSlot) carry windows, scales and soft-caps: same logits as eager."""
    from omnicoder.export.coreml_graph import PrefillStep, StatefulStep, decode_step

    reference = family_model()
    ids = torch.randint(0, 256, (1, PREFILL + STEPS), generator=torch.Generator().manual_seed(5))
    want = torch.cat(reference_logits(reference, ids), dim=1)
    state = StatefulStep(family_model(), CAPACITY)
    rows = [state(ids[:, :PREFILL].int(), torch.zeros(1, 1, PREFILL, PREFILL))]
    rows += [state(ids[:, t : t + 1].int(), torch.zeros(1, 1, 1, t + 1)) for t in range(PREFILL, PREFILL + STEPS)]
    assert (torch.cat(rows, dim=1) - want).abs().max().item() <= 1e-4
    model, n = family_model(), reference.config.n_layers
    out = PrefillStep(model)(ids[:, :PREFILL].int(), torch.arange(PREFILL)[None].int())
    logits, present = [out[0]], list(out[-3 * n : -n])
    for t in range(PREFILL, PREFILL + STEPS):
        out = decode_step(model)(ids[:, t : t + 1].int(), torch.tensor([[t]]).int(), present)
        logits.append(out[0])
        present = list(out[-3 * n : -n])
    assert (torch.cat(logits, dim=1) - want).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kv", ["state", "io"])
def test_coreml_conversion_passes_the_checker(tmp_path, kv):
    """About 30 s per program: the MIL program converts and the static checker accepts it (soft-capped layers
    attend with matmul/tanh/softmax, so the manifest expects no SDPA for them)."""
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install omnicoder[coreml])")
    from omnicoder.export.coreml_export import CoreMLExportOptions, export_coreml_bundle
    from omnicoder.runtimes.coreml_check import check_coreml_bundle

    from omnicoder.tokenizer import ByteTokenizer

    options = CoreMLExportOptions(weights="fp16", kv=kv, max_seq_len=CAPACITY)
    export_coreml_bundle(family_model(), ByteTokenizer().to_json(), tmp_path / kv, options)
    report = check_coreml_bundle(tmp_path / kv)
    assert report["passed"], report["violations"]
    for inventory in report["functions"].values():
        assert inventory["sdpa"] == 0 and inventory["softmax"] == 4


@pytest.mark.slow
def test_coreml_conversion_keeps_sdpa_without_softcap(tmp_path):
    """Without a soft-cap the per-layer windows, RoPE bases and norms still attend with one SDPA per layer."""
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install omnicoder[coreml])")
    from omnicoder.export.coreml_export import CoreMLExportOptions, export_coreml_bundle
    from omnicoder.runtimes.coreml_check import check_coreml_bundle

    from omnicoder.tokenizer import ByteTokenizer

    model = spread_weights(OmniCoder(family_config(attn_logit_softcap=0.0)).eval())
    options = CoreMLExportOptions(weights="int4", kv="state", max_seq_len=CAPACITY)
    export_coreml_bundle(model, ByteTokenizer().to_json(), tmp_path / "b", options)
    report = check_coreml_bundle(tmp_path / "b")
    assert report["passed"], report["violations"]
    assert [inv["sdpa"] for inv in report["functions"].values()] == [4]


# ---- ExecuTorch -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kv", ["buffer", "io"])
def test_executorch_fp32_matches_pytorch(tmp_path, kv):
    """The .pte program (fused custom_sdpa for plain layers, the written-out form for soft-capped ones)."""
    pytest.importorskip("executorch.exir", reason="executorch is not installed (pip install omnicoder[executorch])")
    from omnicoder.export.executorch_export import ExecuTorchExportOptions, export_executorch_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.executorch_session import create_backend

    from omnicoder.tokenizer import ByteTokenizer

    reference = family_model()
    options = ExecuTorchExportOptions(kv=kv, max_seq_len=CAPACITY)
    export_executorch_bundle(family_model(), ByteTokenizer().to_json(), tmp_path / kv, options)
    backend = create_backend(open_bundle(tmp_path / kv))
    ids = torch.randint(0, 256, (1, PREFILL + STEPS), generator=torch.Generator().manual_seed(6))
    tokens = ids[0].tolist()
    rows = [backend.step_all(tokens[:PREFILL], list(range(PREFILL)))]
    rows += [backend.step_all([tokens[i]], [i]) for i in range(PREFILL, PREFILL + STEPS)]
    want = torch.cat(reference_logits(reference, ids), dim=1)[0].numpy()
    # XNNPACK's kernels round differently: up to ~5e-4 on these wide weights (logits up to the soft-cap 3.0)
    assert np.abs(np.concatenate(rows) - want).max() <= 2e-3
    # the bound tells settings apart: one window longer moves the logits far more than that
    other = spread_weights(OmniCoder(family_config(sliding_window=WINDOW + 1)).eval())
    assert np.abs(torch.cat(reference_logits(other, ids), dim=1)[0].numpy() - want).max() > 2e-2
