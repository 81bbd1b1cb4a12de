"""Sliding-window layers' KV kept as a window (runtimes/kv_window.py): rows held, rollback, resident bytes."""

import numpy as np
import pytest
from omnicoder.runtimes.kv_format import KVLayout
from omnicoder.runtimes.kv_window import WindowedKVCache

from omnicoder.errors import OmniCoderError

KV = {
    "heads": 1,
    "key_dim": 2,
    "value_dim": 2,
    "past_key": "past.{layer}.key",
    "past_value": "past.{layer}.value",
    "present_key": "present.{layer}.key",
    "present_value": "present.{layer}.value",
    "windows": [4, 0],
}


def feed(cache: WindowedKVCache, positions: range) -> None:
    """What a decode-step graph does: present = past + the new rows (each row holds its position)."""
    for p in positions:
        presents = {
            name: np.concatenate((past, np.full((1, 1, 1, 2), p, np.float32)), axis=2)
            for name, past in cache.feeds().items()
        }
        cache.update(presents, 1)


def held_positions(cache: WindowedKVCache, name: str) -> list[int]:
    return [int(v) for v in np.asarray(cache.feeds()[name])[0, 0, :, 0]]


def test_sliding_layers_keep_about_a_window_and_full_layers_everything():
    cache = WindowedKVCache(KVLayout(KV, 2), slack=8)
    feed(cache, range(300))
    assert cache.length == 300
    assert held_positions(cache, "past.1.key") == list(range(300))
    kept = held_positions(cache, "past.0.key")
    assert 3 + 8 <= len(kept) <= 3 + 16 and kept == list(range(300 - len(kept), 300))  # the newest rows, in order
    assert held_positions(cache, "past.0.value") == kept
    assert cache.nbytes() == (300 + len(kept)) * 2 * 2 * 4


def test_rollback_within_the_slack_and_a_clear_error_beyond():
    cache = WindowedKVCache(KVLayout(KV, 2), slack=8)
    feed(cache, range(100))
    cache.truncate(95)
    assert held_positions(cache, "past.0.key")[-1] == 94 and held_positions(cache, "past.1.key")[-1] == 94
    feed(cache, range(95, 110))
    assert held_positions(cache, "past.0.key")[-3:] == [107, 108, 109]
    with pytest.raises(OmniCoderError, match="sliding-window layer"):
        cache.truncate(50)
    cache.reset()
    assert cache.length == 0 and held_positions(cache, "past.0.key") == []


def test_resident_bytes_count_per_layer_windows():
    layout = KVLayout(KV, 2)
    row = 2 * 2 * 4  # key + value rows of one layer, fp32
    assert layout.input_windows() == [4, 4, 0, 0]
    assert layout.resident_bytes(1000) == (3 + 1000) * row
    assert layout.resident_bytes(2) == (2 + 2) * row
    assert layout.resident_bytes(1000, slack=64) == (3 + 64 + 1000) * row
    assert KVLayout({**KV, "windows": None}, 2).resident_bytes(10) == 20 * row


def test_onnx_runner_keeps_windows_and_matches_the_full_cache(tmp_path):
    """A bundle with sliding layers: the runner's windowed cache gives the full cache's tokens, holding less."""
    import torch
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_cache import ContiguousKVCache
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
    from omnicoder.runtimes.sampling import Sampler, SamplingParams
    from omnicoder.runtimes.speculative import Speculation

    from omnicoder.model import OmniCoder
    from tests.conftest import export_bundle
    from tests.family_support import WINDOW, family_config, spread_weights

    torch.manual_seed(0)
    model = spread_weights(OmniCoder(family_config()).eval(), 0)
    export_bundle(model, tmp_path / "b", weights="fp32")
    bundle = open_bundle(tmp_path / "b")
    assert bundle.graph["kv"]["windows"] == [WINDOW, 0, WINDOW, 0]
    greedy = Sampler(SamplingParams(temperature=0))

    def backend(windowed: bool) -> GraphBackend:
        b = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)))
        assert isinstance(b.cache, WindowedKVCache)  # what the cache factory picks for such a bundle
        b.cache = WindowedKVCache(b.layout, slack=2) if windowed else ContiguousKVCache(b.layout)
        return b

    prompt = [40, 41, 42, 43, 44, 45, 46]
    full, windowed = backend(False), backend(True)
    want, _ = generate_ids(full, prompt, 40, greedy, 257)
    got, _ = generate_ids(windowed, prompt, 40, greedy, 257)
    assert got == want and len(want) > 2 * WINDOW
    assert windowed.cache.nbytes() < 0.8 * full.cache.nbytes()
    spec = backend(True)
    got, stats = generate_ids(
        spec, [5, 6, 7, 5, 6, 7, 5, 6], 40, greedy, 257, None, Speculation(spec, greedy, 2, 0, "ngram")
    )
    assert got == generate_ids(full, [5, 6, 7, 5, 6, 7, 5, 6], 40, greedy, 257)[0]


def test_budget_tools_count_windows_as_the_runner_holds_them(tmp_path, capsys):
    """omnicoder-kv-budget and omnicoder-mobile-check count a sliding layer's rows as the runner keeps them."""
    import json

    import torch
    from omnicoder.runtimes import kv_budget_enforce, mobile_budget_check
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_budget import MB, PageBudget
    from omnicoder.runtimes.kv_window import SLACK
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.model import OmniCoder
    from tests.conftest import export_bundle
    from tests.family_support import family_config

    torch.manual_seed(0)
    export_bundle(OmniCoder(family_config(max_seq_len=512)).eval(), tmp_path / "b", weights="fp32")
    bundle = open_bundle(tmp_path / "b")
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)))
    context = 400
    ids = [int(t) for t in np.random.default_rng(0).integers(0, 256, context)]
    for start in range(0, context, 50):
        backend.step(ids[start : start + 50], list(range(start, start + 50)))
    held = backend.cache.nbytes()

    budget = PageBudget.from_sidecar(bundle.sidecar("kv_paging"), windows=bundle.graph["kv"]["windows"])
    full = PageBudget.from_sidecar(bundle.sidecar("kv_paging"))
    per_window_layer = budget.layer_bytes[0]
    assert held <= budget.bytes_at(context) <= held + 2 * SLACK * per_window_layer  # the peak between two cuts
    assert budget.bytes_at(context) < 0.7 * full.bytes_at(context)

    assert (
        mobile_budget_check.main(["--bundle", str(tmp_path / "b"), "--device", "pixel-8", "--context", "400", "--json"])
        == 0
    )
    mobile = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert mobile["kv_bytes"] == budget.bytes_at(context)
    mb_needed = budget.bytes_at(context) / MB
    args = ["--bundle", str(tmp_path / "b"), "--context", "400", "--json", "--budget-mb"]
    assert kv_budget_enforce.main([*args, f"{mb_needed * 1.01:.6f}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["plan"]["fits_whole"]
    kv_budget_enforce.main([*args, f"{mb_needed * 0.9:.6f}"])
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["plan"]
    assert plan is None or not plan["fits_whole"]
    assert budget.max_context(budget.bytes_at(context)) >= context - budget.page_len


def test_paged_cache_feeds_and_keeps_windows(tmp_path):
    """Paging: a sliding layer is fed its window's pages only and its older rows are dropped; same tokens."""
    import torch
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_paging import PagingPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    from omnicoder.model import OmniCoder
    from tests.conftest import export_bundle
    from tests.family_support import family_config, spread_weights

    torch.manual_seed(0)
    export_bundle(spread_weights(OmniCoder(family_config(max_seq_len=512)).eval(), 0), tmp_path / "b", weights="fp32")
    bundle = open_bundle(tmp_path / "b")
    greedy = Sampler(SamplingParams(temperature=0))
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, 256, 150)]
    runs = {}
    for name, paging in (
        ("plain", None),
        ("paged", PagingPolicy(page_len=8)),
        ("window", PagingPolicy(page_len=8, window=96)),
        ("spilled", PagingPolicy(page_len=8, window=96, ram_budget_bytes=16 * 1024)),
    ):
        backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, 1)), paging)
        runs[name] = (generate_ids(backend, prompt, 120, greedy, 257)[0], backend.cache)
    assert runs["paged"][0] == runs["plain"][0] and runs["spilled"][0] == runs["window"][0]  # spill is exact
    paged = runs["paged"][1]
    assert paged.nbytes() < 0.75 * len(paged.pages) * paged.page_bytes  # sliding layers' old rows dropped
    assert runs["spilled"][1].spilled_pages() > 0
    rows = {name: a.shape[2] for name, a in paged.feeds().items()}
    assert rows["past_key_values.0.key"] < rows["past_key_values.1.key"] == paged.length
