"""ONNX bundles carry genai_config.json, and onnxruntime-genai runs them as they are (same greedy tokens as our
runner). The genai runs skip, with the reason, where onnxruntime_genai is not importable."""

from __future__ import annotations

import json

import pytest
from omnicoder.runtimes.bundle import open_bundle

from .conftest import greedy_onnx

PROMPT = [256, *b"def fib(n):"]  # BOS + bytes


def genai():
    try:
        import onnxruntime_genai
    except ImportError as exc:
        reason = f"onnxruntime_genai is not importable ({exc}); pip install onnxruntime-genai==0.15.2 to run this"
        print(reason)
        pytest.skip(reason)
    return onnxruntime_genai


def genai_greedy(og, bundle_dir, prompt: list[int], steps: int) -> list[int]:
    model = og.Model(str(bundle_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def assert_same_greedy(theirs: list[int], ours: list[int], eos: int) -> None:
    """genai stops after emitting EOS; up to there the tokens must be ours."""
    assert theirs == ours[: len(theirs)]
    assert len(theirs) == len(ours) or theirs[-1] == eos


def test_gqa_bundle_describes_itself_to_genai(bundles):
    _, _, path = bundles["gqa-fp32"]
    bundle = open_bundle(path)
    assert bundle.manifest["sidecars"]["genai_config"] == "genai_config.json"
    document = bundle.sidecar("genai_config")
    decoder = document["model"]["decoder"]
    graph_inputs = {t["name"] for t in bundle.graph["inputs"]}
    graph_outputs = {t["name"] for t in bundle.graph["outputs"]}
    n = bundle.model["n_layers"]
    assert {decoder["inputs"]["input_ids"], decoder["inputs"]["position_ids"]} <= graph_inputs
    for i in range(n):
        assert decoder["inputs"]["past_key_names"] % i in graph_inputs
        assert decoder["inputs"]["past_value_names"] % i in graph_inputs
        assert decoder["outputs"]["present_key_names"] % i in graph_outputs
        assert decoder["outputs"]["present_value_names"] % i in graph_outputs
    assert decoder["outputs"]["logits"] in graph_outputs
    assert decoder["filename"] == bundle.graph["file"]
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"]) == (n, bundle.model["n_kv_heads"])
    assert decoder["head_size"] == bundle.model["head_dim"]
    assert document["model"]["eos_token_id"] == bundle.model["eos_id"]
    assert document["search"]["past_present_share_buffer"] is False  # present = past + new tokens


def test_mla_bundle_has_no_genai_config_and_says_why(bundles):
    _, _, path = bundles["mla-fp32"]
    bundle = open_bundle(path)
    assert "genai_config" not in bundle.manifest["sidecars"]
    assert not (path / "genai_config.json").exists()
    assert any("latent KV" in note for note in bundle.graph["constraints"])


@pytest.mark.parametrize("variant", ["gqa-fp32", "gqa-int4", "gqa-fp16", "gqa-ortgqa"])
def test_genai_generates_our_greedy_tokens(variant, bundles):
    og = genai()
    _, _, path = bundles[variant]
    steps = 16
    eos = open_bundle(path).model["eos_id"]
    assert_same_greedy(genai_greedy(og, path, PROMPT, steps), greedy_onnx(path, PROMPT, steps), eos)


def test_genai_tokenizer_reads_hf_bundle(tmp_path):
    og = genai()
    pytest.importorskip("transformers", reason="transformers is not installed")
    from omnicoder.export.cli import main as export_main

    from tests.test_hf_import import make_hf_model

    make_hf_model("llama", tmp_path / "hf", seed=3)
    out = tmp_path / "bundle"
    assert export_main(["--model", f"hf:{tmp_path / 'hf'}", "--weights", "int4", "--out", str(out)]) == 0
    bundle = open_bundle(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    tokenizer = og.Tokenizer(og.Model(str(out)))
    text = "def fibonacci(n): the lazy dog"
    assert list(tokenizer.encode(text)) == bundle.tokenizer().encode(text)
    prompt = [bundle.model["bos_id"], *bundle.tokenizer().encode("def fibonacci(n):")]
    assert_same_greedy(genai_greedy(og, out, prompt, 12), greedy_onnx(out, prompt, 12), bundle.model["eos_id"])


def test_quantized_kv_graphs_get_no_genai_config():
    from omnicoder.export.genai_config import unsupported_reason

    from omnicoder.presets import gqa_test_config

    config = gqa_test_config()
    past = [f"past_key_values.{i}.{s}" for i in range(config.n_layers) for s in ("key", "value")]
    ids = [{"name": n, "dtype": "int64"} for n in ("input_ids", "position_ids")]
    assert unsupported_reason(config, ids + [{"name": n, "dtype": "float16"} for n in past]) is None
    codes = ids + [{"name": n, "dtype": "uint8"} for n in past]
    assert "float KV tensors only" in unsupported_reason(config, codes)
    scales = codes + [{"name": "past_key_values.0.key_scale", "dtype": "float16"}]
    assert "does not feed (past_key_values.0.key_scale)" in unsupported_reason(config, scales)
