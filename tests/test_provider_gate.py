"""The calibrated provider gate (a profile with `"calibrate": true`, as ci-cpu): its floors are ratios of the
bundle's tok/s to a fixed probe timed in the same run, so it passes a healthy build on any CPU and on a busy
machine, and still fails a missing fused attention op, unfused int4 and a 3x slower step.

Every decision compares two speeds measured side by side in one run on this machine (never an absolute time):
floors are recorded here first, from the healthy bundle, as a user of a new machine class would record them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from omnicoder.runtimes import bench_onnx, provider_bench
from omnicoder.runtimes.graph_backend import GraphBackend

from omnicoder.weights import load_model

from .conftest import export_bundle
from .test_provider_bench import SHIPPED

CPU = "CPUExecutionProvider"
MARGIN = 0.5  # as ci-cpu: a healthy run may lose half its ratio to noise; a 3x slowdown loses two thirds


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """The default model's int4 bundle, and a calibrated profile whose floors were recorded from it here."""
    root = tmp_path_factory.mktemp("gate")
    export_bundle(load_model("default"), root / "int4", weights="int4")
    ci = json.loads(SHIPPED.read_text())["profiles"]["ci-cpu"]
    profile = {
        "description": "calibrated test profile",
        "measured": True,
        "source": "tests",
        "safety_margin": MARGIN,
        "bench": {**ci["bench"], "calibrate": True},
        "providers": {CPU: {"fused_attention": True, "floors": {}}},
        "history": [],
    }
    document = {"format": "omnicoder-provider-thresholds", "format_version": 1, "profiles": {"gate": profile}}
    thresholds = root / "thresholds.json"
    thresholds.write_text(json.dumps(document))
    for _ in range(3):  # the reference is the best of the recent runs, as on a CI machine
        assert run(root / "int4", thresholds, root, "--update-thresholds")[0] == 0
    return root, thresholds


def run(bundle, thresholds, tmp_path, *extra) -> tuple[int, dict]:
    out = tmp_path / "out" / "pb.json"
    argv = ["--bundle", str(bundle), "--profile", "gate", "--thresholds", str(thresholds), "--out", str(out)]
    code = provider_bench.main([*argv, *extra])
    return code, json.loads(out.read_text())


def checks(report: dict) -> dict:
    return {c["name"]: c for p in report["providers"] for c in p["checks"]}


def test_the_shipped_ci_profile_is_calibrated():
    ci = json.loads(SHIPPED.read_text())["profiles"]["ci-cpu"]
    floor = ci["providers"][CPU]["floors"]["omnicoder-tiny/int4"]
    assert ci["bench"]["calibrate"] and floor["measured"] and "min_decode_tok_s" not in floor
    for kind in ("decode", "prefill"):
        ratio = floor[f"min_{kind}_ratio"] / floor["reference"][f"{kind}_ratio"]
        assert 1 / 3 < ratio <= 1 / 2, (kind, ratio)  # a 3x slowdown fails, a 2x noisy one passes


def test_records_ratio_floors_and_passes_a_healthy_bundle(gate, tmp_path):
    root, thresholds = gate
    floor = json.loads(thresholds.read_text())["profiles"]["gate"]["providers"][CPU]["floors"]["omnicoder-tiny/int4"]
    assert floor["probe_version"] == 1 and floor["reference"]["runs"] == 3
    assert floor["min_decode_ratio"] <= floor["reference"]["decode_ratio"] * (1 - MARGIN)
    code, report = run(root / "int4", thresholds, tmp_path, "--report")
    found = checks(report)
    assert code == 0, found
    page = (tmp_path / "out" / "pb.html").read_text()
    assert page.count("<svg") == 3 and page.count("ratio to the calibration probe") >= 3
    names = {"fused attention ops", "quantized matmul ops", "decode / calibration", "prefill / calibration"}
    assert set(found) == names
    ratios = report["providers"][0]["calibrated_ratios"]
    assert ratios["decode"] == found["decode / calibration"]["measured"] > 0


def test_passes_with_one_core_kept_busy(gate, tmp_path):
    """Another process spinning on one of the two cores slows the probe as much as the bundle."""
    root, thresholds = gate
    spin = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        code, report = run(root / "int4", thresholds, tmp_path)
    finally:
        busy.kill()
        busy.wait()
    assert code == 0, checks(report)


def test_fails_unfused_int4(gate, tmp_path):
    """Without the MatMulNBits fusion decode is ~4x slower: the op count and the decode ratio both fail."""
    root, thresholds = gate
    code, report = run(root / "int4", thresholds, tmp_path, "--graph-optimization", "basic")
    found = checks(report)
    assert code == 1
    assert not found["quantized matmul ops"]["passed"] and not found["decode / calibration"]["passed"]


def test_fails_an_injected_3x_slowdown(gate, tmp_path, monkeypatch):
    """Every decode step and prefill of the bundle takes 3x as long; the probe is untouched."""

    class Slow(GraphBackend):
        def step(self, ids, positions):
            start = time.perf_counter()
            logits = super().step(ids, positions)
            end = time.perf_counter() + 2 * (time.perf_counter() - start)
            while time.perf_counter() < end:
                pass
            return logits

    monkeypatch.setattr(bench_onnx, "GraphBackend", Slow)
    root, thresholds = gate
    code, report = run(root / "int4", thresholds, tmp_path)
    found = checks(report)
    assert code == 1 and found["quantized matmul ops"]["passed"] and found["fused attention ops"]["passed"]
    assert not found["decode / calibration"]["passed"] and not found["prefill / calibration"]["passed"]


def test_fails_a_missing_fused_attention_op(gate, tmp_path):
    """At opset 25 onnxruntime 1.32 has no Attention kernel and runs the op's ONNX function (Softmax, MatMul)."""
    root, thresholds = gate
    export_bundle(load_model("default"), tmp_path / "op25", weights="int4", opset=25)
    code, report = run(tmp_path / "op25", thresholds, tmp_path)
    found = checks(report)
    attention = found["fused attention ops"]
    assert code == 1 and not attention["passed"] and "not fused" in attention["note"]
