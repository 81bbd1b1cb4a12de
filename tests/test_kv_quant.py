"""Quantized KV (fp16 / u8 / nf4, optional Hadamard rotation): formats, graph parity, runner storage, paging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnicoder import kv_quant
from omnicoder.errors import OmniCoderError
from omnicoder.kv_quant import KVQuantSpec, dequantize, quantize, rotate


@pytest.mark.parametrize("dtype", ["fp16", "u8", "nf4"])
def test_quantize_round_trip_error_is_bounded(dtype: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 64) * 3
    spec = KVQuantSpec(dtype, 32)
    back = dequantize(quantize(x, spec), spec, 64)
    groups = x.reshape(2, 3, 7, 2, 32)
    if dtype == "u8":  # half a step of (max - min) / 255, plus fp16 rounding of scale and min
        step = (groups.amax(-1) - groups.amin(-1)) / 255
        bound = (step / 2 + 1e-3 * groups.abs().amax(-1)).repeat_interleave(32, -1)
    elif dtype == "nf4":  # half the widest NF4 gap times the absmax
        gap = float(np.diff(kv_quant.NF4_LEVELS).max())
        bound = (groups.abs().amax(-1) * (gap / 2 + 1e-3)).repeat_interleave(32, -1)
    else:
        bound = x.abs() * 1e-3
    assert ((back - x).abs() <= bound + 1e-6).all()


def test_nf4_codes_pack_two_per_byte() -> None:
    spec = KVQuantSpec("nf4", 32)
    levels = torch.tensor(kv_quant.NF4_LEVELS)
    x = torch.cat((levels, levels.flip(0)))[None]  # the levels themselves quantize exactly
    packed, scale = quantize(x, spec)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == 16 and scale.dtype == torch.float16
    assert torch.equal(dequantize([packed, scale], spec, 32), x)


def test_numpy_mirror_is_bit_exact() -> None:
    from omnicoder.runtimes.kv_format import dequantize as np_dequantize
    from omnicoder.runtimes.kv_format import quantize as np_quantize
    from omnicoder.runtimes.kv_format import rotate as np_rotate

    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 112)
    for dtype in ("fp16", "u8", "nf4"):
        spec = KVQuantSpec(dtype, 32)
        parts = quantize(x, spec)
        ref = dequantize(parts, spec, 112).numpy()
        got = np_dequantize([p.numpy() for p in parts], dtype, 112, spec.group_for(112))
        np.testing.assert_array_equal(got, ref)
        stored = np_quantize(x.numpy(), dtype, 32)
        assert [(s.dtype, s.shape) for s in stored] == [(p.numpy().dtype, p.numpy().shape) for p in parts]
        for mine, torchs in zip(stored, parts, strict=True):
            np.testing.assert_array_equal(mine, torchs.numpy())
    np.testing.assert_allclose(np_rotate(x.numpy(), 16), rotate(x, 16).numpy(), atol=1e-6)


def test_hadamard_rotation_is_exact_without_quantization() -> None:
    torch.manual_seed(2)
    q, k = torch.randn(4, 64), torch.randn(9, 64)
    assert torch.allclose(rotate(rotate(k, 32), 32), k, atol=1e-6)
    assert torch.allclose(rotate(q, 32) @ rotate(k, 32).T, q @ k.T, atol=1e-5)


def test_groups_adapt_to_row_width() -> None:
    spec = KVQuantSpec("u8", 32)
    assert spec.group_for(112) == 16  # MLA rows: 96 latent + 16 RoPE
    assert spec.components(112) == [("", "uint8", 112), ("_scale", "float16", 7), ("_min", "float16", 7)]
    assert KVQuantSpec("nf4", 64).components(128) == [("", "uint8", 64), ("_scale", "float16", 2)]
    with pytest.raises(OmniCoderError, match="kv-rotation"):
        KVQuantSpec("fp16", rotation="hadamard").validate()
    with pytest.raises(OmniCoderError, match="power of two"):
        KVQuantSpec("u8", group=24).validate()


@pytest.mark.parametrize("name", ["gqa-u8", "mla-nf4-had"])
def test_graph_matches_torch_reference_and_stores_only_quantized_kv(bundles, name: str) -> None:
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.decode_step import DecodeStep, example_inputs

    model, _, path = bundles[name]
    bundle = open_bundle(path)
    storage = bundle.graph["kv"]["storage"]
    spec = KVQuantSpec(storage["dtype"], 32, storage["rotation"])
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)))
    ids = list(np.random.RandomState(0).randint(0, 256, 20))
    prefill = backend.step_all(ids[:12], list(range(12)))
    decoded = [backend.step(ids[i : i + 1], [i]) for i in range(12, 20)]
    got = np.concatenate([prefill, np.stack(decoded)])
    _, _, empty = example_inputs(model.config, batch=1, seq=1, past=0, spec=spec)
    with torch.no_grad():
        ref = DecodeStep(model, spec)(torch.tensor([ids]), torch.arange(20)[None], empty)[0][0].numpy()
        plain = model(torch.tensor([ids]), torch.arange(20)[None]).logits[0].numpy()
    # step by step through ONNX == all at once in PyTorch: new tokens attend to their own stored form
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(ref - plain).max() > 1e-3  # quantization really happens
    held = backend.cache.feeds()
    assert {str(v.numpy().dtype) for v in held.values()} <= {"uint8", "float16"}
    sidecar = bundle.sidecar("kv_paging")
    per_layer = sidecar["bytes_per_token_per_layer"]
    assert backend.cache.nbytes() == per_layer * bundle.model["n_layers"] * 20
    assert sidecar["kv_dtype"] == storage["dtype"] and bundle.manifest["precision"]["kv"] == storage["dtype"]


def test_paged_quantized_kv_equals_contiguous_and_spills_exactly(bundles) -> None:
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_paging import PagingPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    _, _, path = bundles["gqa-u8"]
    bundle = open_bundle(path)
    ids = list(np.random.RandomState(3).randint(0, 256, 40))
    plain = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)))
    want = plain.step_all(ids, list(range(40)))
    # a window of one page + every other page predicted == everything attended; the budget spills pages
    policy = PagingPolicy(page_len=8, window=8, predicted_pages=8)
    budget = PagingPolicy(
        page_len=8, window=8, predicted_pages=8, ram_budget_bytes=2 * 8 * plain.layout.bytes_per_token()
    )
    outputs = []
    for p in (policy, budget):
        paged = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)), p)
        outputs.append(np.concatenate([paged.step_all(ids[i : i + 8], list(range(i, i + 8))) for i in range(0, 40, 8)]))
        assert {str(a.dtype) for page in paged.cache.pages if page.arrays for a in page.arrays.values()} == {
            "uint8",
            "float16",
        }
    assert paged.cache.spilled_pages() > 0
    np.testing.assert_array_equal(outputs[1], outputs[0])  # spilled pages come back bit-identical
    np.testing.assert_allclose(outputs[0], want, atol=1e-4)


def test_export_cli_rejects_bad_kv_options(tmp_path, capsys) -> None:
    from omnicoder.export.cli import main

    assert main(["--model", "default", "--kv", "buffer", "--out", str(tmp_path / "b")]) != 0
    assert "--kv buffer is not available for --target onnx" in capsys.readouterr().err
    assert main(["--model", "default", "--kv", "fp16", "--kv-rotation", "hadamard", "--out", str(tmp_path / "b")]) != 0
    assert "--kv-rotation only applies" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_manifest_describes_every_stored_tensor(bundles) -> None:
    from omnicoder.runtimes.bundle import open_bundle

    bundle = open_bundle(bundles["mla-nf4-had"][2])
    inputs = {spec["name"]: spec for spec in bundle.graph["inputs"]}
    for part in bundle.graph["kv"]["storage"]["key_components"]:
        spec = inputs["past_key_values.0.key" + part["suffix"]]
        assert spec["dtype"] == part["dtype"] and spec["shape"][-1] == part["width"]
    assert json.loads(bundle.file("model.kv_paging.json").read_text())["kv_rotation"] == "hadamard"
