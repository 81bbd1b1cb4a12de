"""The provider bench gates on fused ops and tok/s floors: it passes a healthy bundle, fails a missing fused op,
an unfused int4 graph and an out-of-reach floor, updates floors from measurements, and says which target
checker is missing. Speed floors here are trivially low (pass) or absurdly high (fail): never timing-sensitive."""

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import onnx
import pytest
from omnicoder.runtimes import provider_bench
from omnicoder.runtimes.bench_graph import graph_op_counts
from omnicoder.runtimes.bench_ops import OpPolicy, op_checks
from omnicoder.runtimes.bench_thresholds import round_down, update
from omnicoder.runtimes.bundle import open_bundle, validate

from omnicoder.errors import OmniCoderError
from tests.conftest import quantized_kernels

from .test_torch_free import BLOCK_TORCH

ROOT = Path(__file__).parents[1]
SHIPPED = ROOT / "profiles" / "provider_thresholds.json"
SMALL = {"threads": 1, "prefill_tokens": 16, "decode_steps": 8, "repeats": 2, "warmup_steps": 2}
CPU = "CPUExecutionProvider"
REACHABLE, UNREACHABLE = 0.01, 1e12


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch):
    """The bench reads these switches from the environment: a developer's shell must not change the tests."""
    monkeypatch.delenv("OMNICODER_UPDATE_THRESHOLDS", raising=False)
    monkeypatch.delenv("OMNICODER_REQUIRE_QLINEAR", raising=False)


def key_of(path) -> str:
    manifest = open_bundle(path).manifest
    return f"{manifest['model']['name']}/{manifest['precision']['weights']}"


def write_thresholds(path, providers, margin=0.9) -> Path:
    document = {
        "format": "omnicoder-provider-thresholds",
        "format_version": 1,
        "profiles": {
            "test": {
                "description": "test profile",
                "measured": True,
                "source": "tests",
                "safety_margin": margin,
                "bench": SMALL,
                "providers": providers,
                "history": [],
            }
        },
    }
    path.write_text(json.dumps(document))
    return path


def cpu_entry(bundle_dir, floor=REACHABLE, **policy) -> dict:
    entry = {"fused_attention": True, **policy, "floors": {}}
    if floor is not None:
        entry["floors"][key_of(bundle_dir)] = {
            "min_decode_tok_s": floor,
            "min_prefill_tok_s": floor,
            "measured": True,
            "source": "tests",
        }
    return entry


def bench(bundle_dir, thresholds, tmp_path, *extra):
    out = tmp_path / "out" / "provider_bench.json"
    argv = ["--bundle", str(bundle_dir), "--profile", "test", "--thresholds", str(thresholds), "--out", str(out)]
    code = provider_bench.main([*argv, *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def checks_of(report) -> dict:
    return {c["name"]: c for p in report["providers"] for c in p["checks"]}


def assert_one_line_error(capsys, code, needle):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err


def test_op_inventory_reader_matches_onnx(bundles, tmp_path):
    path = bundles["gqa-int4"][2]
    assert graph_op_counts(path / "model.onnx") == Counter(n.op_type for n in onnx.load(path / "model.onnx").graph.node)
    code, report = bench(path, write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)}), tmp_path)
    optimized = report["providers"][0]["optimized_graph"]
    assert code == 0 and Path(optimized).is_file()
    assert graph_op_counts(optimized) == Counter(n.op_type for n in onnx.load(optimized).graph.node)
    (tmp_path / "junk.onnx").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(OmniCoderError, match="not a valid ONNX model"):
        graph_op_counts(tmp_path / "junk.onnx")


def test_healthy_int4_bundle_passes(bundles, tmp_path, capsys):
    model, _, path = bundles["gqa-int4"]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)})
    code, report = bench(path, thresholds, tmp_path, "--report")
    assert code == 0 and report["passed"]
    result = report["providers"][0]
    quantized = quantized_kernels(open_bundle(path).manifest)
    assert result["ops"]["MatMulNBits"] == quantized and "DequantizeLinear" not in result["ops"]
    assert result["ops"]["Attention"] == model.config.n_layers
    assert result["ops_by_provider"][CPU]["MatMulNBits"] == quantized
    checks = checks_of(report)
    assert set(checks) == {"fused attention ops", "quantized matmul ops", "decode tok/s", "prefill tok/s"}
    assert checks["decode tok/s"]["measured"] > 0 and checks["prefill tok/s"]["measured"] > 0
    assert result["speed"]["prefill_tokens"] == 16 and len(result["speed"]["prefill_samples"]) == 2
    assert result["peak_rss_mb"] > 0
    spec = result["speculative"]  # reported beside tok/s, not gated
    assert spec["drafter"] == "ngram" and spec["generated"] > 0 and spec["decode_tok_s"] > 0
    assert 1.0 <= spec["tokens_per_call"] <= 1 + spec["max_draft"] and 0 <= spec["acceptance_rate"] <= 1
    out = capsys.readouterr().out
    assert re.search(r"CPU\s+decode tok/s\s+\S+\s+>= 0.01\s+pass", out) and "PASS" in out
    assert re.search(r"speculative_decode_tok_s\s+\S+\s+-\s+info\s+ngram drafts", out)
    page = (tmp_path / "out" / "provider_bench.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert "PASS" in page and len(svgs) == 3
    for svg in svgs:
        ET.fromstring(svg)  # well-formed


def test_fails_when_a_floor_is_out_of_reach(bundles, tmp_path, capsys):
    path = bundles["gqa-int4"][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path, floor=UNREACHABLE)})
    code, report = bench(path, thresholds, tmp_path)
    checks = checks_of(report)
    assert code == 1 and not report["passed"]
    assert not checks["decode tok/s"]["passed"] and not checks["prefill tok/s"]["passed"]
    assert checks["fused attention ops"]["passed"] and checks["quantized matmul ops"]["passed"]
    assert "FAIL" in capsys.readouterr().out


def test_fails_when_a_required_fused_op_is_missing(bundles, tmp_path):
    """The standard-Attention bundle has no GroupQueryAttention; the ort-gqa bundle has one per layer."""
    for name, expected in (("gqa-int4", 1), ("gqa-ortgqa", 0)):
        path = bundles[name][2]
        entry = cpu_entry(path, required_ops=["GroupQueryAttention"])
        code, report = bench(path, write_thresholds(tmp_path / f"{name}.json", {CPU: entry}), tmp_path)
        assert code == expected, name
        assert checks_of(report)["GroupQueryAttention ops"]["passed"] == (expected == 0)


def test_fails_when_int4_is_not_fused_into_matmulnbits(bundles, tmp_path):
    """At the BASIC level onnxruntime leaves DequantizeLinear + MatMul unfused: the gate must catch it."""
    path = bundles["gqa-int4"][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)})
    code, report = bench(path, thresholds, tmp_path, "--graph-optimization", "basic")
    check = checks_of(report)["quantized matmul ops"]
    assert code == 1 and check["measured"] == 0 and "DequantizeLinear left unfused" in check["note"]


def test_fused_attention_is_counted_per_layer():
    manifest = {"model": {"n_layers": 4}, "precision": {"weights": "fp32", "quantized_layers": 0}}
    policy = OpPolicy(fused_attention=True)
    assert op_checks(CPU, Counter(Attention=4), manifest, policy)[0].passed
    lost = op_checks(CPU, Counter(Attention=3, Softmax=1, MatMul=2), manifest, policy)[0]
    assert not lost.passed and "not fused" in lost.note
    assert not op_checks(CPU, Counter(MatMul=8, Softmax=4), manifest, policy)[0].passed
    assert OpPolicy.for_provider("CoreMLExecutionProvider", None).fused_attention
    assert OpPolicy.for_provider("CUDAExecutionProvider", {}).fused_attention
    assert not OpPolicy.for_provider(CPU, None).fused_attention
    assert not OpPolicy.for_provider("XnnpackExecutionProvider", {"fused_attention": False}).fused_attention


@pytest.mark.parametrize("name", ["mla-int8", "gqa-fp32"])
def test_int8_and_fp32_and_the_qlinear_requirement(bundles, tmp_path, monkeypatch, name):
    path = bundles[name][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)})
    code, report = bench(path, thresholds, tmp_path)
    checks = checks_of(report)
    assert code == 0
    if name == "mla-int8":  # DynamicQuantizeMatMul + MatMulIntegerToFloat, one per quantized linear
        assert checks["quantized matmul ops"]["measured"] == quantized_kernels(open_bundle(path).manifest)
    else:
        assert "quantized matmul ops" not in checks
    monkeypatch.setenv("OMNICODER_REQUIRE_QLINEAR", "1")
    code, report = bench(path, thresholds, tmp_path)
    check = checks_of(report)["QLinearMatMul ops"]
    assert code == 1 and not check["passed"] and "OMNICODER_REQUIRE_QLINEAR=1" in check["note"]


def test_update_thresholds_sets_floors_and_keeps_history(bundles, tmp_path, capsys, monkeypatch):
    path = bundles["mla-int4-mnb"][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path, floor=None)}, margin=0.9)
    code, report = bench(path, thresholds, tmp_path)
    assert code == 1 and "no floor" in checks_of(report)["decode tok/s"]["note"]
    code, report = bench(path, thresholds, tmp_path, "--update-thresholds")
    assert code == 0 and "updated test" in capsys.readouterr().out
    document = json.loads(thresholds.read_text())
    validate(document, "provider_thresholds.schema.json", "updated thresholds")
    profile = document["profiles"]["test"]
    floor = profile["providers"][CPU]["floors"][key_of(path)]
    speed = report["providers"][0]["speed"]
    assert floor["measured"] and floor["reference"]["decode_tok_s"] == speed["decode_tok_s"]
    assert floor["min_decode_tok_s"] == round_down(speed["decode_tok_s"] * 0.1)
    assert floor["min_prefill_tok_s"] == round_down(speed["prefill_tok_s"] * 0.1)
    assert [h["model"] for h in profile["history"]] == [key_of(path)] and profile["measured"]
    monkeypatch.setenv("OMNICODER_UPDATE_THRESHOLDS", "1")
    assert bench(path, thresholds, tmp_path)[0] == 0
    monkeypatch.delenv("OMNICODER_UPDATE_THRESHOLDS")
    assert len(json.loads(thresholds.read_text())["profiles"]["test"]["history"]) == 2
    assert bench(path, thresholds, tmp_path)[0] == 0  # floors at a tenth of the measured medians
    assert bench(path, thresholds, tmp_path, "--update-thresholds", "--profile", "new-device")[0] == 0
    created = json.loads(thresholds.read_text())["profiles"]["new-device"]
    assert key_of(path) in created["providers"][CPU]["floors"] and created["bench"]["prefill_tokens"] == 64


def test_update_takes_the_fastest_of_recent_runs():
    """Noise only slows runs down: an update made in a contended moment keeps the floors of the recent fast runs
    (the last five), while older runs no longer count."""
    from omnicoder.runtimes.bench_result import ProviderResult, Speed

    key, host = "m/int4", {"machine": "x86_64", "cpus": 2, "system": "Linux", "onnxruntime": "1"}
    past = [
        {"time": f"t{i}", "provider": CPU, "model": key, "threads": 1, "decode_tok_s": d, "prefill_tok_s": 8 * d}
        for i, d in enumerate([9000.0, 1000.0, 1800.0, 1100.0, 1000.0])
    ]
    past.append({**past[0], "threads": 2})  # other settings do not count either
    profile = {"description": "d", "measured": True, "source": "s", "providers": {CPU: {}}, "history": past}
    document = {"format": "omnicoder-provider-thresholds", "format_version": 1, "profiles": {"p": profile}}
    speed = Speed(1, 64, 48, 5, 8, prefill_tok_s=9200.0, decode_tok_s=1150.0, decode_p10_tok_s=0, decode_p90_tok_s=0)
    update(document, "p", [ProviderResult(CPU, "measured", speed=speed)], key, host, "now")
    floor = profile["providers"][CPU]["floors"][key]
    validate(document, "provider_thresholds.schema.json", "updated")
    assert floor["reference"] == {"decode_tok_s": 1800, "prefill_tok_s": 14400, "runs": 5, "time": "now"}
    assert (floor["min_decode_tok_s"], floor["min_prefill_tok_s"]) == (900, 7200) and len(profile["history"]) == 7


def test_update_never_blesses_a_missing_fused_op(bundles, tmp_path, capsys):
    path = bundles["gqa-int4"][2]
    entry = cpu_entry(path, floor=None, required_ops=["GroupQueryAttention"])
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: entry})
    code, _ = bench(path, thresholds, tmp_path, "--update-thresholds")
    profile = json.loads(thresholds.read_text())["profiles"]["test"]
    assert code == 1 and profile["providers"][CPU]["floors"] == {} and profile["history"] == []
    assert "floors for" in capsys.readouterr().out
    code, _ = bench(path, thresholds, tmp_path, "--update-thresholds", "--graph-optimization", "basic")
    assert_one_line_error(capsys, code, "--update-thresholds measures with the profile's bench settings")


def test_unavailable_providers_are_skipped(bundles, tmp_path, capsys):
    path = bundles["gqa-fp32"][2]
    providers = {CPU: cpu_entry(path), "CoreMLExecutionProvider": cpu_entry(path)}
    code, report = bench(path, write_thresholds(tmp_path / "t.json", providers), tmp_path)
    statuses = {p["provider"]: p["status"] for p in report["providers"]}
    assert code == 0 and statuses == {CPU: "measured", "CoreMLExecutionProvider": "skipped"}
    code, _ = bench(path, tmp_path / "t.json", tmp_path, "--providers", "coreml", "NNAPI")
    assert_one_line_error(capsys, code, "could be measured here")


@pytest.mark.parametrize(
    ("target", "needle"),
    [("coreml", "no graph.coreml section"), ("executorch", "ExecuTorch checker")],
)
def test_targets_without_a_checker_stop_with_one_line(bundles, tmp_path, capsys, target, needle):
    path = tmp_path / "bundle"
    shutil.copytree(bundles["gqa-fp32"][2], path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["target"] = target
    (path / "manifest.json").write_text(json.dumps(manifest))
    code, report = bench(path, write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)}), tmp_path)
    assert report is None
    assert_one_line_error(capsys, code, needle)


def test_bad_input_is_one_line(bundles, tmp_path, capsys):
    path = bundles["gqa-fp32"][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)})
    cases = [
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--providers", "NoSuchEP"], "unknown execution provider"),
        (["--prefill-tokens", "4096"], "exceed the bundle's context"),
        (["--thresholds", str(tmp_path / "missing.json")], "does not exist"),
        (["--out", str(thresholds / "x.json")], "cannot create the output directory"),
    ]
    base = ["--bundle", str(path), "--profile", "test", "--thresholds", str(thresholds), "--out", str(tmp_path / "o")]
    for extra, needle in cases:
        assert_one_line_error(capsys, provider_bench.main([*base, *extra]), needle)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "omnicoder-provider-thresholds", "format_version": 1}))
    assert_one_line_error(capsys, provider_bench.main([*base, "--thresholds", str(tmp_path / "bad.json")]), "invalid")
    assert_one_line_error(capsys, provider_bench.main(["--bundle", str(tmp_path / "nowhere")]), "does not exist")


def test_shipped_profiles():
    document = json.loads(SHIPPED.read_text())
    validate(document, "provider_thresholds.schema.json", str(SHIPPED))
    ci = document["profiles"]["ci-cpu"]
    cpu = ci["providers"][CPU]
    assert ci["measured"] and ci["bench"]["threads"] == 1 and cpu["fused_attention"]
    assert cpu["floors"]["omnicoder-tiny/int4"]["measured"] and ci["history"]  # ratios: tests/test_provider_gate.py
    phones = {name: p for name, p in document["profiles"].items() if name != "ci-cpu"}
    assert {"iphone-13", "iphone-16", "pixel-8", "galaxy-s24", "ipad-m"} <= set(phones)
    for name, profile in phones.items():
        assert not profile["measured"] and "not measured" in profile["source"].lower()
        for provider, entry in profile["providers"].items():
            assert OpPolicy.for_provider(provider, entry).fused_attention, (name, provider)
            for floor in entry["floors"].values():
                assert not floor["measured"] and "placeholder" in floor["source"], (name, provider)


def test_round_down():
    assert round_down(1898.7) == 1800 and round_down(759) == 750 and round_down(0.837) == 0.83
    assert round_down(0) == 0


def test_runs_as_a_script_with_torch_blocked(bundles, tmp_path):
    path = bundles["gqa-int4"][2]
    thresholds = write_thresholds(tmp_path / "t.json", {CPU: cpu_entry(path)})
    argv = ["provider_bench.py", "--bundle", str(path), "--profile", "test", "--thresholds", str(thresholds)]
    argv += ["--out", str(tmp_path / "pb.json")]
    script = ROOT / "runtimes" / "provider_bench.py"
    code = BLOCK_TORCH + f"sys.argv = {argv!r}\nimport runpy; runpy.run_path({str(script)!r}, run_name='__main__')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and json.loads((tmp_path / "pb.json").read_text())["passed"]
