"""Core ML export: the wrappers equal the model in PyTorch, the saved MIL programs pass the checker (SDPA per layer,
int4 constexpr weights, KV states), bad options and tampered bundles give one-line errors, and (macOS only) Core ML
predictions match PyTorch."""

from __future__ import annotations

import json
import platform
import shutil

import numpy as np
import pytest
import torch
from omnicoder.export.coreml_export import CoreMLExportOptions, export_coreml_bundle
from omnicoder.export.coreml_graph import PrefillStep, StatefulStep, decode_step
from omnicoder.runtimes.bundle import finalize_bundle, open_bundle
from omnicoder.runtimes.coreml_check import check_coreml_bundle
from omnicoder.runtimes.coreml_check import main as check_main

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.presets import preset
from omnicoder.tokenizer import ByteTokenizer

CAPACITY = 32
MACOS_ONLY = "Core ML prediction runs only on macOS (coremltools cannot load models elsewhere)"


def tiny(name: str, **overrides) -> OmniCoder:
    torch.manual_seed(0)
    config = OmniCoderConfig.from_dict({**preset(name).to_dict(), **overrides})
    return OmniCoder(config).eval()


def state_logits(step: StatefulStep, ids: torch.Tensor, prefill: int, query_rows: int | None = None) -> torch.Tensor:
    """Prefill `prefill` tokens, then one token per call, as swift-transformers drives a stateful model."""
    rows = query_rows or prefill
    out = [step(ids[:, :prefill].int(), torch.zeros(1, 1, rows, prefill))]
    for t in range(prefill, ids.shape[1]):
        out.append(step(ids[:, t : t + 1].int(), torch.zeros(1, 1, 1, t + 1)))
    return torch.cat(out, dim=1)


# ---- the PyTorch wrappers (no coremltools) ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["test-gqa", "test-mla"])
def test_stateful_step_matches_the_model(name):
    model = tiny(name)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        full = model(ids, torch.arange(9)[None]).logits
        got = state_logits(StatefulStep(model, CAPACITY), ids, prefill=5)
    assert torch.allclose(got, full, atol=1e-5), (got - full).abs().max()


def test_causal_mask_values_are_added():
    """A [1, 1, 1, end] zero mask (what swift-transformers sends) equals a full one; -inf entries hide slots."""
    model = tiny("test-gqa")
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        full = state_logits(StatefulStep(model, CAPACITY), ids, prefill=4)
        broadcast = state_logits(StatefulStep(model, CAPACITY), ids, prefill=4, query_rows=1)
        step = StatefulStep(model, CAPACITY)
        step(ids[:, :4].int(), torch.zeros(1, 1, 4, 4))
        hidden = torch.zeros(1, 1, 1, 5)
        hidden[..., :4] = float("-inf")  # the new token sees only itself
        alone = step(ids[:, 4:5].int(), hidden)
        first = model(ids[:, 4:5], torch.tensor([[4]])).logits
    assert torch.allclose(broadcast, full, atol=1e-6)
    assert torch.allclose(alone, first, atol=1e-5)


@pytest.mark.parametrize("name", ["test-gqa", "test-mla"])
def test_stream_steps_match_the_model(name):
    model = tiny(name)
    ids = torch.randint(0, 256, (1, 8))
    n_kv = model.config.n_layers * (2 if model.config.kv_value_dim else 1)
    with torch.no_grad():
        full = model(ids, torch.arange(8)[None]).logits
        out = PrefillStep(model)(ids[:, :5].int(), torch.arange(5)[None].int())
        logits = [out[0]]
        present = list(out[-(n_kv + model.config.n_layers) : -model.config.n_layers])
        for t in range(5, 8):
            out = decode_step(model)(ids[:, t : t + 1].int(), torch.tensor([[t]]).int(), present)
            logits.append(out[0])
            present = list(out[-(n_kv + model.config.n_layers) : -model.config.n_layers])
    got = torch.cat(logits, dim=1)
    assert torch.allclose(got, full, atol=1e-5), (got - full).abs().max()


def test_exported_program_keeps_the_kv_writes():
    """torch.export (not jit.trace, which drops them) keeps the in-place cache writes: decoding needs the prefill."""
    from omnicoder.export.coreml_graph import _export

    model = tiny("test-mla")
    step = StatefulStep(model, CAPACITY)
    seq, end = torch.export.Dim("sequence", min=1, max=CAPACITY - 1), torch.export.Dim("end", min=1, max=CAPACITY - 1)
    args = (torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 5))
    program = _export(step, args, {"inputIds": {1: seq}, "causalMask": {2: seq, 3: end}}, native_mla=False)
    assert "omnicoder_coreml.mla" not in str(program.graph)  # the composite fallback replaced the custom op
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        got = state_logits(program.module(), ids, prefill=4)
        full = model(ids, torch.arange(7)[None]).logits
    assert torch.allclose(got, full, atol=1e-5), (got - full).abs().max()


# ---- options and CLI errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"kv": "state", "deployment_target": "iOS17"}, "needs Core ML states (iOS18+)"),
        ({"kv": "stream", "weights": "int4", "deployment_target": "iOS17"}, "needs iOS18+"),
        ({"weights": "int8"}, "--weights int8 is unknown"),
        ({"kv": "buffer"}, "--kv buffer is unknown"),
        ({"deployment_target": "iOS16"}, "--deployment-target iOS16"),
        ({"max_seq_len": 4}, "too small"),
    ],
)
def test_unsupported_options_are_one_line_errors(options, needle, tmp_path):
    with pytest.raises(OmniCoderError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")) as e:
        export_coreml_bundle(tiny("test-gqa"), "{}", tmp_path / "b", CoreMLExportOptions(**options))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "b").exists()


def test_cli_rejects_modes_of_other_targets(capsys):
    from omnicoder.export.cli import main

    code = main(["--target", "coreml", "--weights", "8da4w", "--out", "unused"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "fp16, int4" in err


# ---- conversions (coremltools) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_bundle(tmp_path_factory):
    """Export (once per variant in this module): (name, kv, weights, extra options) -> (reference model, bundle)."""
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install omnicoder[coreml])")
    root, made = tmp_path_factory.mktemp("coreml"), {}

    def make(name: str, kv: str, weights: str, **extra):
        key = (name, kv, weights, tuple(sorted(extra.items())))
        if key not in made:
            model = tiny(name)  # int4 quantizes it in place: it then is the reference the bundle must match
            if extra.pop("gguf_blocks", False):
                model.gguf_blocks = fake_gguf_blocks(model)
            out = root / "-".join([name, kv, weights, *map(str, extra.values())])
            options = CoreMLExportOptions(weights=weights, kv=kv, max_seq_len=CAPACITY, **extra)
            export_coreml_bundle(model, ByteTokenizer().to_json(), out, options)
            made[key] = (model, out)
        return made[key]

    return make


def fake_gguf_blocks(model: OmniCoder) -> dict:
    """What a GGUF file holds for some of the model's weights (Q4_1, Q4_0, and a Q8_0 tied embedding), as gguf:
    import records them (model.gguf_blocks), so an int4 export keeps the file's codes."""
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install omnicoder[hf])")
    kinds = gguf.GGMLQuantizationType

    def raw(weight: torch.Tensor, kind):
        return gguf.quants.quantize(weight.detach().numpy().astype(np.float32), kind)

    layer = model.layers[0]
    return {
        "model.layers.0.self_attn.q_proj.weight": ("q4_1", raw(layer.attn.q_proj.weight, kinds.Q4_1)),
        "model.layers.0.mlp.down_proj.weight": ("q4_0", raw(layer.mlp.down_proj.weight, kinds.Q4_0)),
        "model.embed_tokens.weight": ("q8_0", raw(model.embed.weight, kinds.Q8_0)),
    }


def assert_inventory(report: dict, model: OmniCoder, kv: str, weights: str):
    assert report["passed"], report["violations"]
    layers = model.config.n_layers
    for inv in report["functions"].values():
        assert inv["sdpa"] == layers and inv["softmax"] == 0
        if weights == "int4":
            assert inv["linears"]["int4"] >= 6 * layers and inv["int4_blocks"] == [32]
            assert set(inv["linears"]) <= {"int4", "fp16-lm-head", "fp16-retention"}
        else:
            assert set(inv["linears"]) <= {"float", "fp16-lm-head", "fp16-retention"} and not inv["constexpr_users"]
    if kv == "state":
        (inv,) = report["functions"].values()
        assert inv["states"] == ["keyCache", "valueCache"] and inv["inputs"] == ["inputIds", "causalMask"]
        assert inv["state_updates"]["keyCache"] == layers
        assert inv["state_updates"]["valueCache"] == (layers if model.config.attention == "gqa" else 0)
    else:
        assert sorted(report["functions"]) == ["decode", "prefill"]
        assert any(n.startswith("past_key_values_") for n in report["functions"]["decode"]["inputs"])
    meta = report["metadata"]
    assert meta["n_layers"] == str(layers) and meta["max_seq_len"] == str(CAPACITY)
    assert json.loads(meta["rope_scaling"])["type"] == model.config.rope_scaling.type


def test_mla_state_int4_bundle(coreml_bundle, capsys):
    model, path = coreml_bundle("test-mla", "state", "int4")
    bundle = open_bundle(path)
    manifest = bundle.manifest
    assert manifest["target"] == "coreml" and manifest["graph"]["file"] == "model.mlpackage"
    assert manifest["precision"]["weights"] == "int4" and manifest["precision"]["quantized_layers"] > 0
    assert manifest["graph"]["coreml"]["states"][0]["shape"] == [2, 1, 1, CAPACITY, 40]
    assert bundle.sidecar("kv_paging")["kv_dtype"] == "fp16"
    assert not (path / "model.mlpackage" / "executorch_debug_handle_mapping.json").exists()
    assert_inventory(check_coreml_bundle(bundle), model, "state", "int4")
    assert check_main(["--bundle", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_int4_codes_are_the_models_own(coreml_bundle):
    """The package stores exactly the int4 codes of omnicoder.quant (rounded once), scales in fp16."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    from omnicoder.quant import QuantLinear

    model, path = coreml_bundle("test-mla", "state", "int4")
    mlmodel = ct.models.MLModel(str(path / "model.mlpackage"), skip_model_load=True)
    spec = mlmodel.get_spec()
    program = load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    saved = {
        op.data.val.tobytes(): op.scale.val
        for op in program.functions["main"].find_ops(op_type="constexpr_blockwise_shift_scale")
    }
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and n.startswith("layers.")}
    assert len(saved) == len(layers) > 0
    for module in layers.values():
        scales = saved[module.qweight.numpy().tobytes()]
        assert np.array_equal(scales, module.scales.numpy().astype(np.float16))


def _program(path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(path / "model.mlpackage"), skip_model_load=True)
    spec = mlmodel.get_spec()
    return load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir).functions["main"]


def test_int4_quantizes_the_tied_head_and_embedding_with_the_files_blocks(coreml_bundle):
    """A subword-vocabulary export (here forced on a tiny model) quantizes the LM head, and the tied embedding
    gathers rows of the very same constexpr; a gguf: model keeps its file's Q8_0 / Q4_1 / Q4_0 codes."""
    from omnicoder.export.coreml_ops import QuantEmbedding

    from omnicoder.quant import QuantLinear

    model, path = coreml_bundle("test-gqa", "state", "int4", quantize_head=True, gguf_blocks=True)
    manifest = open_bundle(path).manifest
    precision = manifest["precision"]
    assert precision["lm_head"] == "int8, blocks of 32 (the GGUF file's own blocks)"
    assert "the LM head's codes" in precision["embedding"] and precision["file_blocks_kept"] == 3
    head, embed = model.lm_head, model.embed
    assert isinstance(head, QuantLinear) and isinstance(embed, QuantEmbedding) and embed.qweight is head.qweight
    report = check_coreml_bundle(path)
    assert report["passed"], report["violations"]
    inv = report["functions"]["main"]
    assert inv["constexpr_users"] == {"gather": 1, "linear": 7 * model.config.n_layers + 1}
    assert inv["linears"] == {"int4": 7 * model.config.n_layers, "constexpr-int8": 1}
    main = _program(path)
    gathers = main.find_ops(op_type="gather")  # the others read the fp16 RoPE tables
    (table,) = [g.x.op for g in gathers if g.x.op.op_type == "constexpr_blockwise_shift_scale"]
    assert table.data.val.shape == head.qweight.shape
    assert any(op.weight.op is table for op in main.find_ops(op_type="linear"))  # one constexpr, two readers
    assert np.array_equal(table.data.val.astype(np.int8), head.qweight.numpy())
    q_proj = model.layers[0].attn.q_proj  # Q4_1: unsigned codes, the float zero point as an fp16 offset
    offsets = [op for op in main.find_ops(op_type="constexpr_blockwise_shift_scale") if op.offset is not None]
    (kept,) = [op for op in offsets if np.array_equal(op.data.val.astype(np.int8), q_proj.qweight.numpy())]
    assert np.array_equal(kept.offset.val, q_proj.zero_points.numpy().astype(np.float16))


def test_state_bytes_follow_max_seq_len(coreml_bundle):
    """The app-chosen context (--max-seq-len) sizes the KV states; the manifest and metadata say how many bytes."""
    from omnicoder.export.coreml_export import state_bytes

    model, path = coreml_bundle("test-gqa", "state", "int4", quantize_head=True, gguf_blocks=True)
    coreml = open_bundle(path).manifest["graph"]["coreml"]
    c = model.config
    shape = [c.n_layers, 1, c.kv_heads, CAPACITY, c.kv_key_dim]
    assert [s["shape"] for s in coreml["states"]] == [shape, shape]
    sizes = coreml["state_bytes"]
    assert sizes["total"] == sizes["keyCache"] + sizes["valueCache"] == 2 * 2 * np.prod(shape)
    assert sizes["per_token"] * CAPACITY == sizes["total"] == state_bytes(c, CAPACITY)
    assert coreml["metadata"]["omnicoder.state_bytes"] == str(sizes["total"])
    assert state_bytes(c, 4 * CAPACITY) == 4 * sizes["total"]
    assert state_bytes(preset("test-mla"), CAPACITY) == 2 * (2 * 1 * CAPACITY * 40 + 1)  # MLA: latent rows only


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_head_and_embedding_in_pytorch(tied):
    """Without GGUF blocks the head gets int4 codes of omnicoder.quant; a tied embedding reads those very buffers, an
    untied one gets its own; the quantized model stays close to the float one (no coremltools needed)."""
    from omnicoder.export.coreml_ops import QuantEmbedding
    from omnicoder.export.coreml_quant import quantize_for_coreml

    model = tiny("test-gqa", tie_embeddings=tied)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        before = model(ids, torch.arange(9)[None]).logits
        result = quantize_for_coreml(model, quantize_head=True)
        after = model(ids, torch.arange(9)[None]).logits
    assert isinstance(model.embed, QuantEmbedding) and model.lm_head.bits == model.embed.bits == 4
    assert (model.embed.qweight is model.lm_head.qweight) == tied
    assert result.lm_head == "int4, blocks of 32 (omnicoder.quant)" and result.file_blocks == 0
    assert ("the LM head's codes" in result.embedding) == tied
    rows = model.embed(ids)
    if tied:  # the table the gather reads is the head's weight as the head's linear computes with it
        assert torch.equal(rows[0], model.lm_head.dequantized_weight()[ids[0]])
    cosine = torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0)
    assert cosine > 0.9, cosine  # random weights, every matrix in int4: close, not equal


def test_head_policy_follows_the_vocabulary():
    from omnicoder.export.coreml_quant import head_quantized

    assert head_quantized(49152, None) and not head_quantized(258, None)
    assert head_quantized(258, True) and not head_quantized(49152, False)


def test_checker_catches_a_lying_manifest(coreml_bundle, tmp_path, capsys):
    _, path = coreml_bundle("test-mla", "state", "int4")
    copy = tmp_path / "lying"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precision"]["weights"] = "fp16"
    manifest["model"]["n_layers"] = 3
    paging = json.loads((copy / "model.kv_paging.json").read_text())  # a coherent lie: only the program tells
    (copy / "model.kv_paging.json").write_text(json.dumps({**paging, "n_layers": 3}))
    finalize_bundle(copy, {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")})
    report = check_coreml_bundle(copy)
    assert not report["passed"]
    text = "\n".join(report["violations"])
    assert "constexpr (compressed) weights in an fp16 program" in text
    assert "expected one per layer (3)" in text and "metadata n_layers='2'" in text
    assert check_main(["--bundle", str(copy)]) == 1
    assert "VIOLATION" in capsys.readouterr().out


def test_checker_rejects_tampered_packages(coreml_bundle, tmp_path, capsys):
    _, path = coreml_bundle("test-mla", "state", "int4")
    copy = tmp_path / "tampered"
    shutil.copytree(path, copy)
    weights = copy / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert check_main(["--bundle", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch" in err


def test_provider_bench_view(coreml_bundle):
    from omnicoder.runtimes.coreml_check import bench_provider

    _, path = coreml_bundle("test-mla", "state", "int4")
    result = bench_provider(open_bundle(path), "CoreMLProgram")
    assert result.passed and result.speed is None
    names = {c.name: c.measured for c in result.checks}
    assert names["main: scaled_dot_product_attention ops"] == 2 and names["main: int4 linear weights"] >= 12
    assert result.ops["main/write_state"] == 2


def test_checker_does_not_import_torch_or_coremltools(coreml_bundle):
    import subprocess
    import sys

    _, path = coreml_bundle("test-mla", "state", "int4")
    code = (
        "import sys; from omnicoder.runtimes.coreml_check import check_coreml_bundle as c; "
        f"assert c({str(path)!r})['passed']; "
        "assert 'torch' not in sys.modules and 'coremltools' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kv", "weights", "extra"),
    [
        ("test-gqa", "state", "fp16", {}),
        ("test-gqa", "state", "int4", {}),
        ("test-gqa", "stream", "int4", {}),
        ("test-mla", "stream", "fp16", {}),
        ("test-mla", "state", "fp16", {"native_mla": False}),
    ],
)
def test_conversions(coreml_bundle, name, kv, weights, extra):
    model, path = coreml_bundle(name, kv, weights, **extra)
    report = check_coreml_bundle(path)
    assert_inventory(report, model, kv, weights)
    manifest = open_bundle(path).manifest
    if kv == "stream":
        assert manifest["graph"]["coreml"]["default_function"] == "decode"
        assert manifest["graph"]["kv"]["past_key"] == "past_key_values_{layer}_key"
    if not extra.get("native_mla", True):
        assert "composite" in manifest["graph"]["coreml"]["mla_attention"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test-gqa", "test-mla"])
def test_ios17_stream_decomposes_attention(coreml_bundle, name):
    model, path = coreml_bundle(name, "stream", "fp16", deployment_target="iOS17")
    report = check_coreml_bundle(path)
    assert report["passed"], report["violations"]
    for inv in report["functions"].values():
        assert inv["opset"] == "CoreML7" and inv["sdpa"] == 0 and inv["softmax"] == model.config.n_layers
    packages = open_bundle(path).manifest["graph"]["coreml"]["packages"]  # iOS17 has no multifunction packages
    assert packages == {
        "prefill": {"file": "prefill.mlpackage", "function": "main"},
        "decode": {"file": "model.mlpackage", "function": "main"},
    }


@pytest.mark.slow
def test_cli_exports_the_default_model(tmp_path):
    from omnicoder.export.cli import main

    out = tmp_path / "tiny-coreml"
    assert main(["--target", "coreml", "--weights", "int4", "--max-seq-len", "64", "--out", str(out)]) == 0
    assert check_coreml_bundle(out)["passed"]


# ---- numeric parity with PyTorch (macOS) ------------------------------------------------------------------


def _require_macos():
    if platform.system() != "Darwin":
        print(f"skipped: {MACOS_ONLY}")
        pytest.skip(MACOS_ONLY)


def coreml_state_logits(path, ids: np.ndarray, prefill: int) -> np.ndarray:
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(path / "model.mlpackage"), compute_units=ct.ComputeUnit.CPU_ONLY)
    state = mlmodel.make_state()
    feeds = [(ids[:, :prefill], np.zeros((1, 1, prefill, prefill), np.float16))]
    feeds += [(ids[:, t : t + 1], np.zeros((1, 1, 1, t + 1), np.float16)) for t in range(prefill, ids.shape[1])]
    out = [mlmodel.predict({"inputIds": i.astype(np.int32), "causalMask": m}, state=state)["logits"] for i, m in feeds]
    return np.concatenate(out, axis=1).astype(np.float32)


def coreml_stream_logits(path, ids: np.ndarray, prefill: int, manifest: dict) -> np.ndarray:
    import coremltools as ct

    package, cpu = str(path / "model.mlpackage"), ct.ComputeUnit.CPU_ONLY
    functions = {f: ct.models.MLModel(package, function_name=f, compute_units=cpu) for f in ("prefill", "decode")}
    kv = manifest["graph"]["kv"]
    slots = [(kv["past_key"], kv["present_key"])] + ([(kv["past_value"], kv["present_value"])] * bool(kv["past_value"]))
    feeds = {"input_ids": ids[:, :prefill].astype(np.int32), "position_ids": np.arange(prefill, dtype=np.int32)[None]}
    out = functions["prefill"].predict(feeds)
    logits = [out["logits"]]
    for t in range(prefill, ids.shape[1]):
        feeds = {"input_ids": ids[:, t : t + 1].astype(np.int32), "position_ids": np.array([[t]], np.int32)}
        for layer in range(manifest["model"]["n_layers"]):
            for past, present in slots:
                feeds[past.format(layer=layer)] = out[present.format(layer=layer)]
        out = functions["decode"].predict(feeds)
        logits.append(out["logits"])
    return np.concatenate(logits, axis=1).astype(np.float32)


@pytest.mark.parametrize(("name", "kv", "weights"), [("test-mla", "state", "int4"), ("test-gqa", "stream", "fp16")])
def test_coreml_predictions_match_pytorch(coreml_bundle, name, kv, weights):
    _require_macos()
    model, path = coreml_bundle(name, kv, weights)
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        reference = model(ids, torch.arange(12)[None]).logits.numpy()
    if kv == "state":
        got = coreml_state_logits(path, ids.numpy(), prefill=8)
    else:
        got = coreml_stream_logits(path, ids.numpy(), 8, open_bundle(path).manifest)
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() <= 0.03 * scale + 1e-3, np.abs(got - reference).max() / scale
    assert (got.argmax(-1) == reference.argmax(-1)).mean() >= 0.9
