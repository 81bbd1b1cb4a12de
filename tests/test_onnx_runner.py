"""The torch-free ONNX runner: same output as the PyTorch reference, scoring, and one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omnicoder.runtimes import onnx_decode_generate as runner

from omnicoder.cli import generate
from omnicoder.weights import save_model

from .test_torch_free import BLOCK_TORCH

RUNNER = Path(__file__).parents[1] / "runtimes" / "onnx_decode_generate.py"


def run_cli(main, argv, capfd):
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("sampling", [["--temperature", "0"], ["--temperature", "0.9", "--top-k", "20", "--seed", "5"]])
@pytest.mark.parametrize("name", ["gqa-fp32", "mla-fp32"])
def test_same_text_as_pytorch_reference(bundles, name, sampling, tmp_path, capfd):
    _, reference, path = bundles[name]
    model_dir = save_model(reference, tmp_path / "model")
    args = ["--prompt", "def main():\n    ", "--max-new-tokens", "40", *sampling]
    code_t, out_t, err_t = run_cli(generate.main, ["--model", str(model_dir), *args], capfd)
    code_o, out_o, err_o = run_cli(runner.main, ["--bundle", str(path), *args], capfd)
    assert code_t == code_o == 0
    assert out_o == out_t and len(out_t) > 0
    assert "prefill:" in err_o and "decode:" in err_o and "peak RSS" in err_o


def test_json_stats_on_last_line(bundles, capfd):
    code, out, _ = run_cli(
        runner.main,
        ["--bundle", str(bundles["gqa-int4"][2]), "--prompt", "x = ", "--max-new-tokens", "5", "--json"],
        capfd,
    )
    stats = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and stats["prompt_tokens"] == 5 and stats["generated_tokens"] <= 5
    assert {"prefill_tok_s", "decode_tok_s", "peak_rss_mb"} <= set(stats)


def test_score_matches_pytorch(bundles, tmp_path, capfd):
    from omnicoder.evaluate import bits_per_byte

    _, reference, path = bundles["mla-fp32"]
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\nfor name in os.listdir('.'):\n    print(name.upper())\n" * 8)
    code, out, _ = run_cli(runner.main, ["--bundle", str(path), "--score", str(sample), "--json"], capfd)
    onnx_bpb = json.loads(out.strip().splitlines()[-1])["bits_per_byte"]
    torch_bpb = bits_per_byte(reference, [sample.read_bytes()])["bits_per_byte"]
    assert code == 0 and abs(onnx_bpb - torch_bpb) < 1e-5 * torch_bpb


def test_runs_as_a_script_with_torch_blocked(bundles):
    code = BLOCK_TORCH + (
        f"sys.argv = ['onnx_decode_generate.py', '--bundle', {str(bundles['mla-int4-mnb'][2])!r}, "
        "'--prompt', 'def f(x):', '--max-new-tokens', '8', '--temperature', '0']\n"
        f"import runpy; runpy.run_path({str(RUNNER)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "decode:" in proc.stderr and "blocked" not in proc.stderr


def assert_one_line_error(code, err, needle):
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err


def test_bad_inputs(bundles, tmp_path, capfd):
    good = str(bundles["gqa-fp32"][2])
    cases = [
        (["--bundle", str(tmp_path / "none"), "--prompt", "x"], "does not exist"),
        (["--bundle", good, "--prompt", ""], "prompt is empty"),
        (["--bundle", good, "--prompt", "x", "--temperature", "-2"], "--temperature"),
        (["--bundle", good, "--prompt", "x", "--top-p", "0"], "--top-p"),
        (["--bundle", good, "--prompt", "x" * 500], "longer than the model's context"),
        (["--bundle", good, "--score", str(tmp_path / "missing.py")], "not a readable file"),
        (["--bundle", good, "--prompt", "x", "--provider", "NoSuch"], "unknown execution provider"),
        (["--bundle", good, "--prompt", "x", "--provider", "xnnpack"], "not available here"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(runner.main, argv, capfd)
        assert_one_line_error(code, err, needle)


def test_checksum_mismatch_is_one_line(bundles, tmp_path, capfd):
    path = tmp_path / "b"
    shutil.copytree(bundles["gqa-fp32"][2], path)
    with open(path / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    code, _, err = run_cli(runner.main, ["--bundle", str(path), "--prompt", "x"], capfd)
    assert_one_line_error(code, err, "model.onnx")


def test_console_script_installed():
    bindir = Path(sys.executable).parent
    assert os.access(bindir / "omnicoder-onnx-generate", os.X_OK)
