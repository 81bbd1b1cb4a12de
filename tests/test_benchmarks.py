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
