"""Retention: the trained head, its sidecar, and the budgeted KV cache (learned / StreamingLLM / H2O)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.retention import attention_received, labels_from_mass


def test_attention_targets_count_only_later_distant_queries() -> None:
    t = 6
    probs = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1).unsqueeze(1)  # uniform causal attention
    mass = attention_received([probs[None, None]], horizon=3, min_distance=2)[0]
    # token 0 gets 1/3 from query 2 and 1/4 from query 3 (distances 2, 3); the last tokens get nothing
    assert mass[0] == pytest.approx(1 / 3 + 1 / 4)
    assert mass[-1] == 0 and mass[-2] == 0
    labels = labels_from_mass(torch.arange(10.0)[None], 10, keep=0.2, drop=0.5)[0]
    assert labels.tolist() == [2, 2, 2, 2, 2, 1, 1, 1, 0, 0]  # highest mass -> keep (0), lowest -> drop (2)


def test_default_model_ships_a_trained_retention_head() -> None:
    from omnicoder.loading import load_model_and_tokenizer
    from omnicoder.paths import DEFAULT_MODEL_DIR

    model, _ = load_model_and_tokenizer("default")
    assert model.retention_head.weight.abs().sum() > 0
    record = json.loads((DEFAULT_MODEL_DIR / "retention.json").read_text())
    assert record["result"]["keep_over_drop_auc"] > 0.8  # a true keep outranks a true drop 9 times in 10


def test_sidecar_is_written_and_validated(bundles) -> None:
    from omnicoder.runtimes.bundle import open_bundle

    bundle = open_bundle(bundles["mla-fp32"][2])
    sidecar = bundle.sidecar("retention")
    assert sidecar["classes"] == ["keep", "compress", "drop"] and sidecar["compress"]["dtype"] == "nf4"
    paging = bundle.sidecar("kv_paging")
    full = paging["bytes_per_token_per_layer"] * paging["n_layers"] * bundle.model["context_length"]
    assert sidecar["budget_bytes"] == int(sidecar["budget_fraction"] * full)


def _backend(bundles, name, **policy):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_retention import RetentionPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(bundles[name][2])
    plain = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)))
    token = plain.layout.bytes_per_token()
    budget = policy.pop("tokens") * token
    return GraphBackend(
        bundle, OnnxProgram(create_session(bundle, 1)), retention=RetentionPolicy(budget, **policy)
    ), token


@pytest.mark.parametrize("policy", ["learned", "streaming", "h2o"])
def test_budget_sinks_and_recent_window_hold(bundles, policy: str) -> None:
    backend, token = _backend(bundles, "gqa-fp32", tokens=24, policy=policy, sink_tokens=2, recent_window=8)
    ids = list(np.random.RandomState(0).randint(0, 256, 60))
    for start in range(0, 60, 4):
        backend.step_all(ids[start : start + 4], list(range(start, start + 4)))
        cache = backend.cache
        assert cache.nbytes() <= cache.policy.budget_bytes
        held = set(cache.positions.tolist())
        assert {0, 1} <= held and set(range(max(cache.length - 8, 0), cache.length)) <= held
    if policy == "streaming":  # sinks + the newest tokens, nothing compressed
        assert held == {0, 1} | set(range(60 - 22, 60)) and not cache.compressed.any()
    if policy == "learned":  # compressing lets it hold more tokens than the budget does at full precision
        assert cache.compressed.any() and len(held) > 24


def test_positions_stay_absolute_after_eviction(bundles) -> None:
    """The next step over the held rows equals PyTorch with those rows as past at the TRUE position."""
    backend, _ = _backend(bundles, "mla-fp32", tokens=20, policy="streaming", sink_tokens=2, recent_window=8)
    model = bundles["mla-fp32"][1]
    ids = list(np.random.RandomState(1).randint(0, 256, 41))
    backend.step_all(ids[:40], list(range(40)))
    assert backend.cache.evicted > 0
    held = torch.from_numpy(backend.cache.feeds()["past_key_values.0.key"]).shape[2]
    past = [
        (torch.from_numpy(v), torch.from_numpy(v)[..., :0])
        for v in (backend.cache.feeds()[f"past_key_values.{i}.key"] for i in range(model.config.n_layers))
    ]
    got = backend.step(ids[40:41], [40])
    with torch.no_grad():
        want = model(torch.tensor([[ids[40]]]), torch.tensor([[40]]), past).logits[0, -1].numpy()
        compacted = model(torch.tensor([[ids[40]]]), torch.tensor([[held]]), past).logits[0, -1].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(compacted - want).max() > 1e-3  # a position counted from the held tokens would be wrong


def test_bad_retention_settings_fail_in_one_line(bundles) -> None:
    from omnicoder.runtimes.kv_retention import RetentionPolicy

    with pytest.raises(OmniCoderError, match="unknown"):
        RetentionPolicy(1000, policy="lru").validate()
    backend, _ = _backend(bundles, "gqa-fp32", tokens=4, policy="streaming", sink_tokens=2, recent_window=8)
    with pytest.raises(OmniCoderError, match="cannot hold"):
        backend.step_all(list(range(20)), list(range(20)))
    with pytest.raises(OmniCoderError, match="fp32 KV"):
        _backend(bundles, "gqa-u8", tokens=8, policy="streaming")


def test_runner_cli_scores_and_generates_with_retention(bundles, capsys) -> None:
    from omnicoder.runtimes.onnx_decode_generate import main

    path = str(bundles["mla-fp32"][2])
    source = str(__file__)
    assert (
        main(["--bundle", path, "--score", source, "--retention", "learned", "--kv-budget-mb", "0.01", "--json"]) == 0
    )
    budgeted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert budgeted["bytes"] > 1000 and budgeted["bits_per_byte"] > 0
    args = ["--bundle", path, "--prompt", "def f(x):", "--max-new-tokens", "40", "--temperature", "0"]
    assert main([*args, "--retention", "streaming"]) == 0  # the sidecar's default budget
    assert len(capsys.readouterr().out) > 0
    assert main([*args, "--retention", "h2o", "--window", "64"]) == 2
    assert "exclusive" in capsys.readouterr().err
    assert main([*args, "--kv-budget-mb", "1"]) == 2
    assert "applies with --retention" in capsys.readouterr().err
