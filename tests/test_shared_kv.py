"""`omnicoder-export --kv-io shared`: GroupQueryAttention over KV buffers bound as both past and present."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from omnicoder.runtimes.bundle import open_bundle
from omnicoder.runtimes.decode_loop import generate_ids
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.kv_paging import PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionPolicy
from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
from omnicoder.runtimes.sampling import Sampler, SamplingParams
from omnicoder.runtimes.speculative import Speculation

from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config, mla_test_config

from .conftest import export_bundle, greedy_onnx
from .test_genai_compat import PROMPT, assert_same_greedy, genai, genai_greedy


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """name -> (float reference model, bundle dir) for fp32 and int4 weights, and the int4 present-mode twin."""
    root = tmp_path_factory.mktemp("shared")
    made = {}
    for name, options in {
        "fp32": {"weights": "fp32", "kv_io": "shared"},
        "int4": {"weights": "int4", "kv_io": "shared"},
        "int4-present": {"weights": "int4"},
    }.items():
        torch.manual_seed(0)
        model = OmniCoder(gqa_test_config()).eval()
        reference = OmniCoder(gqa_test_config()).eval()
        reference.load_state_dict(model.state_dict())
        export_bundle(model, root / name, **options)
        made[name] = (reference, root / name)
    return made


def backend(path) -> GraphBackend:
    bundle = open_bundle(path)
    return GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1)))


def test_graph_is_group_query_attention_over_one_buffer(shared):
    reference, path = shared["int4"]
    bundle = open_bundle(path)
    layers = reference.config.n_layers
    assert bundle.graph["kv"]["io"] == "shared" and bundle.graph["fusions"]["shared_buffer_attention"] == layers
    assert bundle.graph["attention_op"] == "GroupQueryAttention"
    assert "bind one" in " ".join(bundle.graph["constraints"])
    graph = onnx.load(str(path / "model.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["GroupQueryAttention"] == layers and ops["Attention"] == ops["RotaryEmbedding"] == 0
    for node in (n for n in graph.node if n.op_type == "GroupQueryAttention"):  # packed q/k/v, RoPE inside
        assert node.input[1] == node.input[2] == "" and {a.name: a.i for a in node.attribute}["do_rotary"] == 1
    assert bundle.sidecar("genai_config")["search"]["past_present_share_buffer"] is True


@torch.no_grad()
def test_prefill_chunks_and_decode_match_pytorch(shared):
    reference, path = shared["fp32"]
    runner = backend(path)
    ids = torch.randint(0, 256, (1, 14), generator=torch.Generator().manual_seed(1))
    expected = reference(ids, torch.arange(14)[None]).logits[0].numpy()
    got, start = [], 0
    for end in (6, 7, 8, 11, 14):  # a prompt, single decode steps, then chunks with a past (T > 1)
        part, positions = ids[0, start:end].tolist(), list(range(start, end))
        # single tokens take step()'s bound fast path; longer calls the generic one
        got.append(runner.step(part, positions)[None] if len(part) == 1 else runner.step_all(part, positions))
        start = end
    assert np.abs(np.concatenate(got) - expected).max() <= 1e-4
    assert runner.cache.length == 14 and runner.cache.nbytes() == 128 * runner.layout.bytes_per_token()


def test_int4_packed_rotary_equals_the_present_graph(shared):
    ids = list(range(40, 60))
    shared_logits = backend(shared["int4"][1]).step_all(ids, list(range(20)))
    present_logits = backend(shared["int4-present"][1]).step_all(ids, list(range(20)))
    assert np.abs(shared_logits - present_logits).max() <= 1e-3
    assert greedy_onnx(shared["int4"][1], PROMPT, 12) == greedy_onnx(shared["int4-present"][1], PROMPT, 12)


def test_rollback_reuses_the_buffer(shared):
    """Speculative decoding's truncate: rows past the new length are overwritten by the next step."""
    _, path = shared["fp32"]
    runner = backend(path)
    runner.step_all([1, 2, 3, 4, 5], list(range(5)))
    runner.truncate(3)
    again = runner.step_all([9, 8], [3, 4])
    fresh = backend(path).step_all([1, 2, 3, 9, 8], list(range(5)))
    assert np.abs(again - fresh[-2:]).max() <= 1e-5


def test_full_context_is_refused_with_one_line(shared):
    _, path = shared["fp32"]
    runner = backend(path)
    with pytest.raises(OmniCoderError, match="context is full"):
        runner.step_all([1] * 129, list(range(129)))
    runner.reset()
    runner.step_all([1] * 127, list(range(127)))
    runner.step([2], [127])  # the last slot, through the single-token fast path
    assert runner.cache.length == 128
    with pytest.raises(OmniCoderError, match="context is full"):
        runner.step([3], [128])


def test_what_shared_buffers_cannot_do(shared, tmp_path):
    bundle = open_bundle(shared["fp32"][1])
    session = create_session(bundle)
    with pytest.raises(OmniCoderError, match="--kv-io present"):
        GraphBackend(bundle, OnnxProgram(session), paging=PagingPolicy(page_len=4, window=8))
    with pytest.raises(OmniCoderError, match="--kv-io present"):
        GraphBackend(bundle, OnnxProgram(session), retention=RetentionPolicy(budget_bytes=10_000, policy="streaming"))
    with pytest.raises(OmniCoderError, match="needs a GQA model"):
        export_bundle(OmniCoder(mla_test_config()).eval(), tmp_path / "mla", weights="fp32", kv_io="shared")
    with pytest.raises(OmniCoderError, match="needs a GQA model"):
        export_bundle(OmniCoder(gqa_test_config()).eval(), tmp_path / "u8", weights="fp32", kv="u8", kv_io="shared")


def test_genai_runs_the_shared_bundle(shared):
    og = genai()
    _, path = shared["int4"]
    theirs = genai_greedy(og, path, PROMPT, 12)
    assert_same_greedy(theirs, greedy_onnx(path, PROMPT, 12), eos=open_bundle(path).model["eos_id"])


def test_speculative_greedy_equals_plain_greedy(shared):
    """Random MTP heads (mostly rejected drafts): verify calls (T = 3) and rollbacks on the shared buffers."""
    _, path = shared["fp32"]
    greedy, prompt = Sampler(SamplingParams(temperature=0)), list(range(40, 60))
    plain, _ = generate_ids(backend(path), prompt, 40, greedy, 257)
    fast_backend = backend(path)
    fast, stats = generate_ids(fast_backend, prompt, 40, greedy, 257, None, Speculation(fast_backend, greedy, 2))
    assert fast == plain and stats.draft_tokens > 0


def test_scoring_windows_from_an_empty_cache(shared):
    """full_logits (the scorer's batched windows) runs the shared graph with ordinary, empty pasts."""
    _, path = shared["fp32"]
    ids = np.array([list(range(30, 46)), list(range(60, 76))])
    batched = backend(path).full_logits(ids)
    for row, window in zip(batched, ids, strict=True):
        assert np.abs(row - backend(path).step_all(window.tolist(), list(range(16)))).max() <= 1e-4


def test_kv_budget_tool_knows_shared_buffers_grow_to_the_context(shared, capsys):
    from omnicoder.runtimes import kv_budget_enforce

    _, path = shared["fp32"]
    whole = 128 * open_bundle(path).sidecar("kv_paging")["bytes_per_token_per_layer"] * 2  # context x 2 layers
    assert kv_budget_enforce.main(["--bundle", str(path), "--budget-mb", "1"]) == 0
    assert f"shared KV buffers: up to {whole} bytes" in capsys.readouterr().out
    assert kv_budget_enforce.main(["--bundle", str(path), "--budget-mb", str(whole / 2 / 2**20)]) == 1
    err = capsys.readouterr().err
    assert "grows to its whole context" in err and "--kv-io present" in err and "Traceback" not in err


@torch.no_grad()
def test_sliding_window_model_decodes_past_its_window(tmp_path):
    """A Mistral import (window 8): GroupQueryAttention's local window equals the model's, 24 tokens in."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")
    from omnicoder.loading import load_model_and_tokenizer

    from .test_hf_import import make_hf_model

    make_hf_model("mistral", tmp_path / "hf")
    reference, _ = load_model_and_tokenizer(f"hf:{tmp_path / 'hf'}")
    export_bundle(load_model_and_tokenizer(f"hf:{tmp_path / 'hf'}")[0], tmp_path / "b", weights="fp32", kv_io="shared")
    ids = torch.randint(0, 200, (1, 24), generator=torch.Generator().manual_seed(0))
    expected = reference(ids, torch.arange(24)[None]).logits[0].numpy()
    runner = backend(tmp_path / "b")
    got = [runner.step_all(ids[0, :10].tolist(), list(range(10)))]
    got += [runner.step_all([int(ids[0, i])], [i]) for i in range(10, 24)]
    assert np.abs(np.concatenate(got) - expected).max() <= 1e-4


def test_buffers_start_small_and_grow_with_the_run(shared, monkeypatch):
    """The shared buffers hold a few tokens at first and double as the run grows (keeping the rows in use):
    the same greedy tokens as the present-mode twin, and no whole-context allocation up front."""
    import omnicoder.runtimes.cache_factory as cache_factory

    monkeypatch.setattr(cache_factory, "SHARED_KV_START", 4)
    prompt = [5, 17, 99, 3, 42, 8]
    grown = backend(shared["int4"][1])
    assert grown.cache.capacity == 4
    got, ids, positions = [], list(prompt), list(range(len(prompt)))
    for _ in range(20):
        got.append(int(np.argmax(grown.step(ids, positions))))
        ids, positions = [got[-1]], [positions[-1] + 1]
    assert grown.cache.capacity == 32 < grown.model_context
    assert got == greedy_onnx(shared["int4-present"][1], prompt, 20)
