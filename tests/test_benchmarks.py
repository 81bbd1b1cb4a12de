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
