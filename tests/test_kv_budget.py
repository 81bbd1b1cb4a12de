"""KV budget tools: the sidecar arithmetic, omnicoder-kv-budget and omnicoder-mobile-check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omnicoder.runtimes import kv_budget_enforce, mobile_budget_check
from omnicoder.runtimes.bundle import finalize_bundle, validate
from omnicoder.runtimes.kv_budget import MB, PageBudget, bytes_per_token_per_layer, plan_paging
from omnicoder.runtimes.kv_format import row_bytes

from omnicoder.errors import OmniCoderError

from .conftest import export_bundle
from .test_torch_free import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]
# The default model's sidecar (omnicoder-tiny: MLA, 4 layers, latent 96 + RoPE 16 = 112 floats per token).
TINY = {"page_len": 64, "n_layers": 4, "heads": 1, "dl": 96, "rope_dim": 16, "key_dim": 112, "value_dim": 0,
        "kv_dtype": "fp32", "bytes_per_token_per_layer": 448, "context_length": 512}  # fmt: skip


def test_bytes_per_token_from_the_sidecar_and_from_the_widths():
    assert bytes_per_token_per_layer(TINY) == [448.0] * 4
    computed = {k: v for k, v in TINY.items() if k != "bytes_per_token_per_layer"}
    assert bytes_per_token_per_layer(computed) == [448.0] * 4  # 1 head x 112 x 4 bytes, no value row
    layout = PageBudget.from_sidecar(TINY)
    assert (layout.bytes_per_token, layout.page_bytes) == (1792, 64 * 1792)
    assert layout.bytes_at(512) == 8 * 114688 and layout.bytes_at(65) == 2 * 114688  # whole pages
    assert layout.max_context(3 * 114688 + 5) == 192


def test_quantized_rows_carry_their_group_scales():
    # MLA rows of 96 + 16: groups of 16 (the largest power of two <= 32 dividing 112), as the export cuts them
    assert row_bytes(112, "u8") == 112 + 7 * 4  # fp16 scale + minimum per group
    assert row_bytes(112, "nf4") == 56 + 7 * 2  # two values a byte, one fp16 scale a group
    assert row_bytes(64, "u8") == 64 + 2 * 4
    assert row_bytes(0, "u8") == 0
    assert bytes_per_token_per_layer(TINY, "u8") == [140.0] * 4  # the sidecar's 448 is for fp32 only
    assert PageBudget.from_sidecar(TINY, "nf4").page_bytes == 64 * 4 * 70


def test_gqa_and_per_layer_widths():
    gqa = {"page_len": 16, "n_layers": 2, "heads": 2, "dl": 16, "kv_dtype": "fp16"}
    assert bytes_per_token_per_layer(gqa) == [2 * (16 + 16) * 2.0] * 2  # key and value rows of head_dim
    mixed = {"page_len": 16, "n_layers": 2, "heads_per_layer": [1, 2], "dl_per_layer": [16, 32], "rope_dim": 8}
    assert bytes_per_token_per_layer(mixed) == [1 * (24 + 16) * 4.0, 2 * (40 + 32) * 4.0]
    mla = {**mixed, "value_dim": 0}
    assert bytes_per_token_per_layer(mla) == [24 * 4.0, 2 * 40 * 4.0]
    with pytest.raises(OmniCoderError, match="dl_per_layer has 1 entries for 2 layers"):
        bytes_per_token_per_layer({**mixed, "dl_per_layer": [16]})


def test_plan_keeps_the_whole_context_when_it_fits_and_pages_otherwise():
    layout = PageBudget.from_sidecar(TINY)  # pages of 114688 bytes
    whole = plan_paging(layout, 512, 8 * 114688, model_context=512)
    assert whole.fits_whole and (whole.window, whole.sink_pages, whole.spill_bytes) == (512, 0, 0)
    assert whole.runner_flags(1) == ""  # nothing to page
    # 4096 tokens with 12 pages of RAM: the attended pages must fit the 512-token context (8 pages of 64)
    paged = plan_paging(layout, 4096, 12 * 114688 + 100, model_context=512)
    assert (paged.sink_pages, paged.predicted_pages, paged.window) == (1, 0, 6 * 64)
    assert paged.resident_bytes == 12 * 114688 and paged.spill_bytes == (64 - 12) * 114688
    assert paged.runner_flags(1.5) == "--window 384 --sink-pages 1 --kv-ram-budget-mb 1.5"
    longer = plan_paging(layout, 4096, 12 * 114688, model_context=4096)  # a long-context variant
    assert longer.window == 10 * 64
    small = plan_paging(layout, 4096, 3 * 114688, model_context=512)
    assert (small.window, small.predicted_pages) == (64, 0)
    assert plan_paging(layout, 4096, 3 * 114688 - 1, model_context=512) is None
    assert plan_paging(layout, 4096, 12 * 114688, model_context=128) is None  # 2 pages cannot hold 3


@pytest.fixture(scope="module")
def mla_bundle(tmp_path_factory) -> Path:
    """The MLA test model (2 layers, 32 latent + 8 RoPE = 160 bytes per token per layer), pages of 64 tokens."""
    import torch

    from omnicoder.model import OmniCoder
    from omnicoder.presets import mla_test_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("kvb") / "mla"
    export_bundle(OmniCoder(mla_test_config()).eval(), out, weights="fp32", page_len=16)
    return out


def with_sidecar(bundle: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    path = copy / manifest["sidecars"]["kv_paging"]
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    finalize_bundle(copy, manifest)
    return copy


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_enforce_whole_context_fits(mla_bundle, capsys):
    assert kv_budget_enforce.main(["--bundle", str(mla_bundle), "--budget-mb", "1", "--json"]) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["fits"] and result["bytes_per_token"] == 320 and result["page_bytes"] == 5120
    assert result["plan"]["total_bytes"] == 8 * 5120 and result["plan"]["spill_bytes"] == 0
    assert result["runner_flags"] == ""  # no paging flags needed
    assert "whole context resident" in out


def test_enforce_pages_a_long_context(mla_bundle, capsys):
    code = kv_budget_enforce.main(["--bundle", str(mla_bundle), "--budget-mb", "0.1", "--context", "1024", "--json"])
    assert code == 0
    result = last_json(capsys.readouterr().out)
    # 0.1 MB = 20 pages of 5120 bytes in RAM; the 128-token context attends 8: sink + 6 window + tail
    plan = result["plan"]
    assert (plan["window"], plan["sink_pages"], plan["predicted_pages"]) == (96, 1, 0)
    assert (plan["resident_bytes"], plan["total_bytes"]) == (20 * 5120, 64 * 5120)
    assert plan["spill_bytes"] == 44 * 5120
    assert result["runner_flags"] == "--window 96 --sink-pages 1 --kv-ram-budget-mb 0.1"


def test_enforce_fails_below_the_minimum(mla_bundle, capsys):
    assert kv_budget_enforce.main(["--bundle", str(mla_bundle), "--budget-mb", "0.01", "--context", "1024"]) == 1
    err = one_line_error(capsys)
    assert "holds 2 KV page(s) of 5120 bytes" in err and "raise --budget-mb to at least 0.0147" in err
    assert "--kv u8/nf4" in err


def test_enforce_fails_when_the_spill_limit_is_exceeded(mla_bundle, tmp_path, capsys):
    bundle = with_sidecar(mla_bundle, tmp_path, spill_bytes=100000)
    args = ["--bundle", str(bundle), "--budget-mb", "0.1", "--context", "1024", "--json"]
    assert kv_budget_enforce.main(args) == 1
    captured = capsys.readouterr()
    assert not last_json(captured.out)["fits"] and last_json(captured.out)["runner_flags"] is None
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "spills 0.215 MB (225280 bytes)" in err and "spill_bytes 0.0954 MB (100000 bytes)" in err
    assert "raise --budget-mb to at least 0.22" in err  # 45 pages resident keep the spill under 100000
    assert "lower --context to at most 624" in err  # (20 resident + 19 spillable pages) x 16 tokens
    args[3] = "0.22"
    assert kv_budget_enforce.main(args) == 0


def test_enforce_bad_input_is_one_line(mla_bundle, capsys):
    assert kv_budget_enforce.main(["--bundle", str(mla_bundle), "--budget-mb", "0"]) == 2
    assert "--budget-mb must be a positive" in one_line_error(capsys)
    assert kv_budget_enforce.main(["--bundle", str(mla_bundle / "nope"), "--budget-mb", "1"]) == 2
    assert "does not exist" in one_line_error(capsys)


def test_devices_file_is_valid_and_covers_the_bench_profiles():
    devices = json.loads((ROOT / "profiles" / "devices.json").read_text())
    validate(devices, "devices.schema.json", "devices.json")
    profiles = json.loads((ROOT / "profiles" / "provider_thresholds.json").read_text())["profiles"]
    assert set(profiles) <= set(devices["devices"])
    ios = [d for d in devices["devices"].values() if d["os"] in ("iOS", "iPadOS")]
    assert ios and all(d["limit_basis"] == "reported, approximate" for d in ios)


def test_mobile_check_fits_on_ci(mla_bundle, capsys):
    assert mobile_budget_check.main(["--bundle", str(mla_bundle), "--device", "ci-cpu", "--json"]) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    manifest = json.loads((mla_bundle / "manifest.json").read_text())
    assert result["weights_bytes"] == manifest["files"]["model.onnx"]["bytes"]  # not the tokenizer or sidecar
    assert result["kv_bytes"] == 2 * 20480 and result["app_limit_bytes"] == 8192 * MB
    assert result["overhead_bytes"] == int(100 * MB + 0.25 * result["weights_bytes"])
    assert result["total_bytes"] == result["weights_bytes"] + result["kv_bytes"] + result["overhead_bytes"]
    assert result["if_exported_with_kv"]["u8"]["kv_bytes"] == 2 * 64 * 2 * (40 + 5 * 4)  # rows of 40: groups of 8
    assert "KV if exported with --kv nf4" in out and "fits" in out


def test_mobile_check_over_the_limit(mla_bundle, tmp_path, capsys):
    weights = json.loads((mla_bundle / "manifest.json").read_text())["files"]["model.onnx"]["bytes"]
    devices = {
        "format": "omnicoder-devices",
        "format_version": 1,
        "default_overhead": {"base_mb": 0, "weights_factor": 0},
        "devices": {"tiny": {"description": "test", "class": "phone", "os": "none", "ram_gb": 1,
                             "app_limit_mb": weights / MB + 0.1, "limit_basis": "test", "source": "test"}},
    }  # fmt: skip
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(devices))
    args = ["--bundle", str(mla_bundle), "--device", "tiny", "--devices", str(path), "--context", "1024", "--json"]
    assert mobile_budget_check.main(args) == 1
    captured = capsys.readouterr()
    result = last_json(captured.out)
    assert not result["fits"] and result["max_context"] == 5 * 64  # 0.1 MB of room = 5 pages of 20480 bytes
    assert "OVER" in captured.out
    err = captured.err
    assert err.count("\n") == 1 and "over the tiny app memory limit by" in err
    assert "longest context that fits is 320 tokens" in err


def test_mobile_check_unknown_device_lists_the_known_ones(mla_bundle, capsys):
    assert mobile_budget_check.main(["--bundle", str(mla_bundle), "--device", "nokia-3310"]) == 2
    err = one_line_error(capsys)
    assert "unknown device 'nokia-3310'" in err and "iphone-15" in err and "pixel-8" in err


def test_scripts_run_without_torch(mla_bundle):
    for script, args in (
        ("kv_budget_enforce.py", ["--budget-mb", "0.1", "--context", "1024"]),
        ("mobile_budget_check.py", ["--device", "iphone-13"]),
    ):
        argv = [script, "--bundle", str(mla_bundle), *args, "--json"]
        path = str(ROOT / "runtimes" / script)
        code = f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path({path!r}, run_name='__main__')\n"
        proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert last_json(proc.stdout)["format"].startswith("omnicoder-")
