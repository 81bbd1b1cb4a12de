"""The paged KV cache: exact when every page is attended, exact across spills, and unbounded with a window."""

import json

import numpy as np
import pytest
from omnicoder.runtimes.bundle import open_bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.kv_format import KVLayout
from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy
from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

from omnicoder.errors import OmniCoderError

TOKENS = [int(t) for t in np.random.default_rng(0).integers(0, 256, 70)]


def step_logits(backend, tokens, prefill=20):
    backend.reset()
    logits = [backend.step(tokens[:prefill], list(range(prefill)))]
    for i in range(prefill, len(tokens)):
        logits.append(backend.step([tokens[i]], [i]))
    return np.stack(logits)


@pytest.mark.parametrize("name", ["gqa-fp32", "mla-fp32"])
def test_all_pages_attended_equals_contiguous_exactly(bundles, name):
    bundle = open_bundle(bundles[name][2])
    session = create_session(bundle)
    contiguous = step_logits(GraphBackend(bundle, OnnxProgram(session)), TOKENS)
    for policy in (PagingPolicy(page_len=8), PagingPolicy(page_len=16, window=64, sink_pages=1)):
        paged = GraphBackend(bundle, OnnxProgram(session), policy)
        got = step_logits(paged, TOKENS)
        assert np.array_equal(got[1:], contiguous[1:])  # decode steps: the same past in the same order
        assert np.abs(got[0] - contiguous[0]).max() < 1e-5  # the prompt was prefilled in page-sized chunks
        assert paged.cache.length == len(TOKENS)


def test_spilled_pages_come_back_bit_identical(bundles):
    bundle = open_bundle(bundles["gqa-fp32"][2])
    layout = KVLayout(bundle.graph["kv"], bundle.model["n_layers"])
    policy = PagingPolicy(page_len=8, window=8, sink_pages=1, ram_budget_bytes=1)
    cache = PagedKVCache(layout, policy, select=lambda c, candidates: candidates)
    rng = np.random.default_rng(1)
    written = {name: [] for name in layout.inputs}
    for _ in range(6):  # 6 pages of 8 tokens, fed as graph presents
        rows = {
            name: rng.standard_normal((1, layout.heads, 8, w)).astype(np.float32)
            for name, w in zip(layout.inputs, layout.widths, strict=True)
        }
        for name, value in rows.items():
            written[name].append(value[0])
        cache.update(rows, 8)
    assert cache.spilled_pages() == 4  # all but the sink page and the window page
    assert cache.nbytes() == 2 * cache.page_bytes
    policy.predicted_pages = 6  # now select every page: spilled ones come back from the file
    feeds = cache.feeds()
    for name in layout.inputs:
        assert np.array_equal(feeds[name][0], np.concatenate(written[name], axis=1))


def test_small_window_generates_past_the_context(bundles):
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    bundle = open_bundle(bundles["mla-int4-mnb"][2])
    context = bundle.model["context_length"]
    backend = GraphBackend(
        bundle, OnnxProgram(create_session(bundle)), PagingPolicy(page_len=16, window=48, sink_pages=1)
    )
    out, stats = generate_ids(backend, [256, 65, 66], 2 * context, Sampler(SamplingParams(temperature=0.8)), -1)
    assert len(out) == 2 * context and stats.stop_reason == "limit"
    assert backend.cache.length > context
    assert len(backend.cache.attended) <= 1 + 48 // 16 + 1  # sink + window pages (+ a partial one)


def test_window_wider_than_the_context_is_refused(bundles):
    bundle = open_bundle(bundles["gqa-fp32"][2])
    with pytest.raises(OmniCoderError, match="lower --window"):
        GraphBackend(
            bundle,
            OnnxProgram(create_session(bundle)),
            PagingPolicy(page_len=16, window=bundle.model["context_length"]),
        )


def test_quest_ranks_the_page_holding_the_matching_key_first(bundles):
    bundle = open_bundle(bundles["mla-fp32"][2])
    layout = KVLayout(bundle.graph["kv"], bundle.model["n_layers"])
    cache = PagedKVCache(layout, PagingPolicy(page_len=4))
    rng = np.random.default_rng(2)
    width = layout.widths[0]
    target = np.zeros(width, np.float32)
    target[3] = 10.0
    for page in range(5):
        rows = {
            n: rng.standard_normal((1, 1, 4, w)).astype(np.float32) * 0.1
            for n, w in zip(layout.inputs, layout.widths, strict=True)
        }
        if page == 3:
            rows[layout.inputs[0]][0, 0, 2] = target
        cache.update(rows, 4)
    query = {layout.inputs[0]: target[None]}
    assert cache.quest_scores(query, [0, 1, 2, 3, 4])[0] == 3


def test_runner_flags(bundles, capfd):
    from omnicoder.runtimes import onnx_decode_generate as runner

    path = str(bundles["gqa-int4"][2])
    assert (
        runner.main(
            [
                "--bundle",
                path,
                "--prompt",
                "x",
                "--max-new-tokens",
                "200",
                "--window",
                "32",
                "--page-len",
                "16",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    assert "generated: 200" in capfd.readouterr().err
    assert runner.main(["--bundle", path, "--prompt", "x", "--window", "-1"]) == 2
    assert "window" in capfd.readouterr().err


def test_streaming_score_with_every_page_attended_equals_windowed_scorer(bundles, tmp_path, capfd):
    """A file shorter than the context, scored through the paged cache, equals the windowed teacher-forced score."""
    from omnicoder.runtimes import onnx_decode_generate as runner

    sample = tmp_path / "s.py"
    sample.write_text("def f(x):\n    return x * 2\n" * 3)  # 90 bytes < the 128-token context
    path = str(bundles["mla-fp32"][2])
    assert runner.main(["--bundle", path, "--score", str(sample), "--json"]) == 0
    plain = json.loads(capfd.readouterr().out.strip().splitlines()[-1])["bits_per_byte"]
    assert runner.main(["--bundle", path, "--score", str(sample), "--json", "--window", "96", "--page-len", "16"]) == 0
    paged = json.loads(capfd.readouterr().out.strip().splitlines()[-1])["bits_per_byte"]
    assert abs(paged - plain) < 1e-5 * plain


@pytest.mark.parametrize("name", ["gqa-fp32", "mla-fp32"])
def test_predicted_pages_covering_everything_equal_contiguous(bundles, name):
    """Window of 2 pages + up to 8 predicted pages covers all 9 pages: decode equals contiguous KV exactly."""
    bundle = open_bundle(bundles[name][2])
    session = create_session(bundle)
    contiguous = step_logits(GraphBackend(bundle, OnnxProgram(session)), TOKENS)
    paged = GraphBackend(
        bundle, OnnxProgram(session), PagingPolicy(page_len=8, window=16, sink_pages=0, predicted_pages=8)
    )
    got = step_logits(paged, TOKENS)
    assert np.array_equal(got[1:], contiguous[1:])
    assert len(paged.cache.attended) == len(paged.cache.pages)


def test_predicted_pages_are_chosen_by_the_graph_queries(bundles):
    bundle = open_bundle(bundles["gqa-fp32"][2])
    backend = GraphBackend(
        bundle, OnnxProgram(create_session(bundle)), PagingPolicy(page_len=8, window=16, predicted_pages=1)
    )
    step_logits(backend, TOKENS)
    c = bundle.model
    queries = backend.cache.last_queries
    assert set(queries) == {f"past_key_values.{i}.key" for i in range(c["n_layers"])}
    assert all(q.shape == (c["n_heads"], c["head_dim"]) for q in queries.values())
    window = set(backend.cache.window_pages())
    candidates = [i for i in range(len(backend.cache.pages)) if i not in window]
    best = backend.cache.quest_scores(queries, candidates)[0]
    assert backend.cache.attended_pages() == sorted(window | {best})
