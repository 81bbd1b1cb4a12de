"""Self-speculative decoding with the MTP heads: greedy output identical, sampling distribution unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omnicoder.runtimes.decode_loop import generate_ids
from omnicoder.runtimes.sampling import Sampler, SamplingParams
from omnicoder.runtimes.speculative import accept, generate_ids_speculative

from omnicoder.errors import OmniCoderError
from omnicoder.generate import TorchBackend
from omnicoder.loading import load_model_and_tokenizer

PROMPT = b"def fibonacci(n):\n    if n < 2:\n        return n\n    return "


@pytest.fixture(scope="module")
def default_model():
    return load_model_and_tokenizer("default")


@pytest.mark.parametrize("k", [1, 2])
def test_greedy_speculative_equals_greedy_in_pytorch(default_model, k: int) -> None:
    model, tokenizer = default_model
    prompt = tokenizer.encode(PROMPT.decode(), add_bos=True)
    greedy = Sampler(SamplingParams(temperature=0))
    plain, _ = generate_ids(TorchBackend(model), prompt, 64, greedy, tokenizer.eos_id)
    fast, stats = generate_ids_speculative(TorchBackend(model), prompt, 64, greedy, tokenizer.eos_id, k)
    assert fast == plain
    assert stats.draft_tokens > 0 and stats.accepted_tokens > 0  # the trained heads do get drafts accepted
    assert stats.model_calls < len(plain)  # fewer model calls than tokens


def test_greedy_speculative_equals_greedy_through_onnx(bundles) -> None:
    """Random MTP heads (mostly rejected drafts) exercise the KV rollback of the ONNX runner."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.kv_paging import PagingPolicy
    from omnicoder.runtimes.onnx_session import OnnxBackend, create_session

    _, _, path = bundles["mla-fp32"]
    bundle = open_bundle(path)
    prompt = list(range(40, 60))
    greedy = Sampler(SamplingParams(temperature=0))
    # paged storage with every page attended; with a --window the verify call attends the window as of its first
    # token (up to k tokens more than plain decoding would), so windowed outputs may differ slightly
    for paging in (None, PagingPolicy(page_len=8, window=0)):
        plain, _ = generate_ids(OnnxBackend(bundle, create_session(bundle, 1), paging), prompt, 40, greedy, 257)
        backend = OnnxBackend(bundle, create_session(bundle, 1), paging)
        fast, stats = generate_ids_speculative(backend, prompt, 40, greedy, 257, 2)
        assert fast == plain
        assert stats.draft_tokens > 0
        assert backend.cache_length - len(prompt) in (len(plain) - 1, len(plain))  # rejected drafts rolled back


def test_acceptance_rule_keeps_the_target_distribution() -> None:
    """Draft from q, accept/resample against p: the emitted tokens follow p (chi-square at 6 sigma)."""
    rng = np.random.default_rng(0)
    target, proposal = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=1))
    n = 40000
    counts = np.zeros(6)
    for _ in range(n):
        token = int(rng.choice(6, p=proposal))
        counts[accept(sampler, token, target, proposal)[1]] += 1
    expected = n * target
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 5 + 6 * np.sqrt(2 * 5), (counts / n, target)


def test_sampled_speculative_runs_and_reports_acceptance(default_model) -> None:
    model, tokenizer = default_model
    prompt = tokenizer.encode(PROMPT.decode(), add_bos=True)
    sampler = Sampler(SamplingParams(temperature=0.8, top_p=0.95, seed=3))
    out, stats = generate_ids_speculative(TorchBackend(model), prompt, 48, sampler, tokenizer.eos_id, 2)
    assert 0 < len(out) <= 48 and 0.0 <= stats.acceptance_rate <= 1.0
    assert "drafts accepted" in stats.line() and "acceptance_rate" in stats.to_dict()


def test_speculative_needs_mtp_heads() -> None:
    from omnicoder.model import OmniCoder
    from omnicoder.presets import preset

    config = preset("test-gqa")
    model = OmniCoder(config).eval()
    greedy = Sampler(SamplingParams(temperature=0))
    with pytest.raises(OmniCoderError, match="MTP heads"):
        generate_ids_speculative(TorchBackend(model), [1, 2, 3], 4, greedy, 257, config.n_mtp + 1)


def test_generate_cli_speculative_matches_plain(capsys) -> None:
    from omnicoder.cli.generate import main

    args = ["--prompt", PROMPT.decode(), "--max-new-tokens", "40", "--temperature", "0"]
    assert main(args) == 0
    plain = capsys.readouterr()
    assert main([*args, "--speculative", "2"]) == 0
    fast = capsys.readouterr()
    assert fast.out == plain.out and "drafts accepted" in fast.err
    torch.set_num_threads(torch.get_num_threads())


def test_onnx_runner_speculative_flag(bundles, capsys) -> None:
    from omnicoder.runtimes.onnx_decode_generate import main

    args = ["--bundle", str(bundles["mla-fp32"][2]), "--prompt", "def f(x):", "--max-new-tokens", "30"]
    assert main([*args, "--temperature", "0"]) == 0
    plain = capsys.readouterr()
    assert main([*args, "--temperature", "0", "--speculative", "2"]) == 0
    fast = capsys.readouterr()
    assert fast.out == plain.out and "drafts accepted" in fast.err
    assert main([*args, "--speculative", "3"]) == 2  # the model has 2 MTP heads
    assert "at most 2" in capsys.readouterr().err
