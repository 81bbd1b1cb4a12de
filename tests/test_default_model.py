"""The embedded default model: shipped, documented, better than gzip, and faithful through ONNX."""

import json
import re

import numpy as np
import pytest
import torch
from omnicoder.runtimes.bundle import open_bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

from omnicoder.paths import DEFAULT_MODEL_DIR
from omnicoder.tokenizer import ByteTokenizer
from omnicoder.weights import load_model

from .conftest import export_bundle

PROMPT = 'import os\nimport sys\n\n\ndef main(argv):\n    """Parse the command line and run."""\n'


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


@pytest.fixture(scope="module")
def default_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    export_bundle(load_model("default"), root / "fp32", weights="fp32")
    export_bundle(load_model("default"), root / "int4", weights="int4")
    return root


def test_shipped_files_and_size():
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["attention"] == "mla" and config["n_mtp"] >= 1 and config["retention_head"]


def test_model_card_reports_measurements():
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    for needle in ("omnicoder-train", "parameters", "training time", "gzip", "xz", "bits per byte"):
        assert needle in card, needle
    measured = json.loads((DEFAULT_MODEL_DIR / "eval.json").read_text())
    # the goal on CPU: held-out bits per byte below gzip's on the same files
    assert measured["bits_per_byte"] < measured["gzip_per_file_bits_per_byte"]
    assert f"{measured['bits_per_byte']:.4f}" in card


def test_greedy_generation_is_stable(default_model):
    from omnicoder.runtimes.decode_loop import generate_text
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    from omnicoder.generate import TorchBackend

    texts = [
        generate_text(TorchBackend(default_model), ByteTokenizer(), PROMPT, 48, Sampler(SamplingParams(temperature=0)))[
            0
        ]
        for _ in range(2)
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 0
    assert re.search(r"[a-z]", texts[0])  # a trained model writes code, not noise


@torch.no_grad()
def test_fp32_onnx_matches_pytorch_for_64_greedy_steps(default_model, default_bundles):
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    from omnicoder.generate import TorchBackend

    bundle = open_bundle(default_bundles / "fp32")
    onnx_backend, torch_backend = GraphBackend(bundle, OnnxProgram(create_session(bundle))), TorchBackend(default_model)
    prompt = ByteTokenizer().encode(PROMPT, add_bos=True)
    greedy = Sampler(SamplingParams(temperature=0))
    onnx_ids, _ = generate_ids(onnx_backend, prompt, 64, greedy, eos_id=-1)
    torch_ids, _ = generate_ids(torch_backend, prompt, 64, greedy, eos_id=-1)
    assert onnx_ids == torch_ids and len(onnx_ids) == 64
    # logits along the whole greedy sequence
    sequence = np.array([prompt + torch_ids])
    expected = default_model(torch.from_numpy(sequence), torch.arange(sequence.shape[1])[None]).logits.numpy()
    assert np.abs(onnx_backend.full_logits(sequence) - expected).max() <= 1e-4


def test_int4_bits_per_byte_within_3_percent(default_bundles):
    from omnicoder.runtimes.scoring import bits_per_byte

    from omnicoder.data import find_corpus, read_documents

    docs = [doc[:12000] for doc in read_documents(find_corpus().heldout)[:6]]
    scores = {}
    for name in ("fp32", "int4"):
        bundle = open_bundle(default_bundles / name)
        backend = GraphBackend(bundle, OnnxProgram(create_session(bundle)))
        scores[name] = bits_per_byte(
            backend.full_logits, docs, bundle.model["bos_id"], bundle.model["pad_id"], bundle.model["context_length"]
        )["bits_per_byte"]
    print(f"held-out sample: fp32 {scores['fp32']:.4f} bits/byte, int4 {scores['int4']:.4f}")
    assert scores["int4"] <= 1.03 * scores["fp32"]
