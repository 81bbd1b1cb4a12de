"""Smoke runs of the benchmark scripts on tiny models (slow: `pytest -m slow`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_decode_speed_script(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "decode_speed.py"),
        "--models",
        "test-gqa",
        "--repeats",
        "1",
        "--decode-steps",
        "4",
        "--prompt-tokens",
        "16",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = json.loads((tmp_path / "decode_speed.json").read_text())["models"]["test-gqa"]["rows"]
    assert set(rows) == {"pytorch-eager-fp32", "onnx-fp32", "onnx-int4-attention", "onnx-int4-gqa"}
    assert all(r["decode_tok_s"] > 0 and r["bandwidth_bound_tok_s"] > 0 for r in rows.values())


@pytest.mark.slow
def test_int4_kernel_options_script(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "int4_kernel_options.py"), "--rounds", "1", "--calls", "5"]
    subprocess.run([*cmd, "--out", str(tmp_path)], check=True, capture_output=True)
    result = json.loads((tmp_path / "int4_kernel_options.json").read_text())
    assert set(result["layers"]) == {"20m", "110m"} and set(result["lm_head"]) == {"256 x 32000", "768 x 32000"}
    assert all(us > 0 for rows in (*result["layers"].values(), *result["lm_head"].values()) for us in rows.values())
    assert set(result["fused_ops_on_cpu"]) == {"MatMulNBitsMlp", "MatMulNBitsQkv", "SwiGLU (com.microsoft)",
                                               "SwiGLU (ONNX 28)"}  # fmt: skip


def test_compare_peers_report_and_plot(tmp_path, capsys):
    """The peer bench's table, goal verdict and plot, from the recorded run (the run itself needs the peer venv)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare_peers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = json.loads((ROOT / "docs" / "results" / "compare_peers.json").read_text())
    compare_peers.report(results)
    printed = capsys.readouterr().out
    for size, entry in results["sizes"].items():
        ours = [r for name, r in entry["rows"].items() if name.startswith("ours") and r["available"]]
        best = max(r["decode_vs_genai"] for r in ours)
        assert f"{size} (" in printed and f"{best:.2f}x, {'met' if best >= 1.1 else 'not met'}" in printed
    compare_peers.plot(results, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _fake_logits(ids, vocab: int = 11):
    """Deterministic logits [W, V] that depend on the whole prefix (so window boundaries matter)."""
    import numpy as np

    ids = np.asarray(ids, np.int64).reshape(-1)
    prefix = np.cumsum(ids)
    return np.sin(np.outer(prefix + np.arange(len(ids)), np.arange(1, vocab + 1)) * 0.37)


def test_peers_bpb_plan_matches_runtime_scoring():
    """The peers' windows plan, aggregated per window, gives runtimes/scoring.py's bits per byte."""
    import numpy as np
    from omnicoder.runtimes.scoring import bits_per_byte, document_windows

    peers_bpb = _bench_module("peers_bpb")
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 11, n).tolist() for n in (5, 40, 23)]
    expected = bits_per_byte(lambda ids: np.stack([_fake_logits(r) for r in ids]), docs, 1, 2, 16, n_bytes=200)
    windows = [
        {"ids": w.ids, "targets": w.targets, "first": w.first_scored}
        for doc in docs
        for w in document_windows([1, *doc], 16, 8)
    ]
    got = peers_bpb.score_plan(_fake_logits, {"name": "windows", "windows": windows, "bytes": 200})
    assert got["tokens"] == expected["tokens"] == sum(len(d) for d in docs)
    assert abs(got["bits_per_byte"] - expected["bits_per_byte"]) < 1e-9


def test_peers_bpb_llama_plan_and_perplexity_parsing():
    """llama-perplexity's scheme (second half of each chunk) and its output turned into bits per byte."""
    import math

    peers_bpb = _bench_module("peers_bpb")
    tokens = [i * 5 % 7 for i in range(1100)]
    plan = peers_bpb.llama_chunk_plan(tokens, 512, len)
    assert len(plan["windows"]) == 2 and plan["scored"] == 2 * 255 and plan["bytes"] == 2 * 255
    second = plan["windows"][1]
    assert second["ids"] == tokens[512:1023] and second["targets"][second["first"] :] == tokens[512 + 257 : 1024]
    uniform = peers_bpb.score_plan(lambda ids: [[0.0] * 7] * len(ids), plan)  # uniform over 7 tokens
    assert abs(uniform["bits_per_byte"] - math.log2(7)) < 1e-9
    log = "perplexity: calculating perplexity over 2 chunks, n_ctx=512, batch_size=512, n_seq=1\n[1]9.1,[2]7.0,\n"
    parsed = peers_bpb.parse_perplexity(log + "Final estimate: PPL = 7.0000 +/- 0.12345\n")
    assert parsed == {"chunks": 2, "n_ctx": 512, "ppl": 7.0, "ppl_err": 0.12345}
    assert abs(peers_bpb.perplexity_bpb(parsed, 510)["bits_per_byte"] - math.log2(7)) < 1e-9
    with pytest.raises(ValueError):
        peers_bpb.parse_perplexity("main: error: failed to load model")


def test_peers_bpb_parse_llama_bench_json():
    """Prefill from the depth-0 prompt test, decode from the generation test after the prompt."""
    peers_bpb = _bench_module("peers_bpb")
    rows = [
        {"n_prompt": 128, "n_gen": 0, "n_depth": 0, "avg_ts": 500.0, "stddev_ts": 5.0},
        {"n_prompt": 0, "n_gen": 32, "n_depth": 0, "avg_ts": 70.0, "stddev_ts": 1.0},
        {"n_prompt": 128, "n_gen": 0, "n_depth": 128, "avg_ts": 450.0, "stddev_ts": 5.0},
        {"n_prompt": 0, "n_gen": 32, "n_depth": 128, "avg_ts": 66.0, "stddev_ts": 1.0},
    ]
    got = peers_bpb.parse_llama_bench(json.dumps(rows))
    assert (got["prefill_tok_s"], got["decode_tok_s"], got["decode_depth"]) == (500.0, 66.0, 128)
    with pytest.raises(ValueError):
        peers_bpb.parse_llama_bench("[]")


def test_peers_real_report_from_recorded_run(capsys):
    """The SmolLM2 table and the issue's four goal verdicts, from the recorded run (the run needs llama.cpp)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import peers_real
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    entry = json.loads((ROOT / "docs" / "results" / "compare_peers_smollm2-135m.json").read_text())
    peers_real.report("smollm2-135m", entry, entry["threads"])
    printed = capsys.readouterr().out
    assert all(name in printed for name in [*peers_real.ONNX_ENGINES, *peers_real.LLAMA_ENGINES])
    verdicts = [line.rsplit(": ", 1)[1] for line in printed.splitlines() if line.startswith("goal: ")]
    assert len(verdicts) == 4 and set(verdicts) <= {"met", "missed"}


@pytest.mark.slow
def test_speculative_peers_worker_summary_and_report(tmp_path, capsys):
    """The speculative peers bench on a tiny fp32 bundle: our worker (plain vs n-gram drafts, equal outputs), a
    llama.cpp-style log parsed, the table, goal verdicts, report and plot (the real run needs the peers)."""
    import torch

    from omnicoder.model import OmniCoder
    from omnicoder.presets import gqa_test_config
    from tests.conftest import export_bundle

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import speculative_peers as sp
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    export_bundle(OmniCoder(gqa_test_config()).eval(), tmp_path / "b", weights="fp32")
    motif = list(b"def add(a, b):\n    return a + b\n")
    prompts = {
        "code_completion": {"kind": "input-grounded", "ids": motif * 3, "max_new_tokens": 24, "stop_ids": [257]},
        "free_text": {"kind": "free", "ids": list(b"Once upon a time"), "max_new_tokens": 24, "stop_ids": [257]},
    }
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speculative_peers.py"), "--worker", "ours"]
    cmd += ["--path", str(tmp_path / "b"), "--threads", "1", "--prompts", str(tmp_path / "prompts.json"), "--ks", "4"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result.pop("tie_margin") > 0 and result.pop("caveats") == []
    for rows in result.values():
        assert rows["ngram-k4"]["tokens"] == rows["plain"]["tokens"]  # fp32: speculative == plain greedy
        assert rows["ngram-k4"]["model_calls"] <= rows["plain"]["model_calls"]
    err = "encoded   96 tokens in    0.100 seconds, speed: 960.0 t/s\ndecoded   25 tokens in    0.250 seconds"
    llama = {}
    for mode, drafted in (("plain", 0), ("lookup-k4", 12)):
        counters = f"n_drafted    = {drafted}\nn_accept     = {drafted // 2}\n"
        llama[mode] = sp.parse_llama("prompt text" + " x" * 25, f"{err}, speed: 100.0 t/s\n{counters}", "prompt text")
    assert llama["lookup-k4"]["model_calls"] == 19 and llama["plain"]["text"] == " x" * 25
    runs = {"ours-int4": result, "llamacpp-q4_1": {name: llama for name in prompts}}  # one round each
    samples = {1: {engine: {w: {m: [row] for m, row in rows.items()} for w, rows in by_workload.items()}
                   for engine, by_workload in runs.items()}}  # fmt: skip
    table = sp.summarize(samples, prompts)
    verdicts = sp.goals(table, samples, prompts, [4])
    assert {g["workload"] for g in verdicts if "met" in g} == {"code_completion", "free_text"}
    assert table["1"]["code_completion"]["ours-int4 ngram-k4"]["equals_plain"] is True
    sp.report({"table": table, "goals": verdicts})
    printed = capsys.readouterr().out
    assert "llamacpp-q4_1 lookup-k4" in printed and "goal [1t k=4 code_completion]" in printed
    sp.plot({"table": table}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
