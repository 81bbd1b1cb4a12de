"""Bad input to the CLIs gives one line on stderr, a non-zero exit and no traceback."""

import subprocess
import sys

import pytest

from omnicoder.cli import evaluate, generate, train
from omnicoder.weights import save_model


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "model")


def assert_one_line_error(capsys, code, needle):
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err


def test_missing_model_dir(capsys, tmp_path):
    code = generate.main(["--model", str(tmp_path / "nope"), "--prompt", "x"])
    assert_one_line_error(capsys, code, "does not exist")


def test_corrupt_config(capsys, model_dir):
    (model_dir / "config.json").write_text("{broken")
    assert_one_line_error(capsys, generate.main(["--model", str(model_dir), "--prompt", "x"]), "not valid JSON")


def test_impossible_config(capsys, model_dir):
    (model_dir / "config.json").write_text('{"n_heads": 3, "n_kv_heads": 2}')
    assert_one_line_error(capsys, generate.main(["--model", str(model_dir), "--prompt", "x"]), "n_kv_heads")


def test_corrupt_safetensors(capsys, model_dir):
    (model_dir / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(capsys, generate.main(["--model", str(model_dir), "--prompt", "x"]), "safetensors")


def test_weights_of_another_shape(capsys, model_dir, tmp_path):
    import json

    config = json.loads((model_dir / "config.json").read_text())
    config["n_layers"] = 1
    (model_dir / "config.json").write_text(json.dumps(config))
    assert_one_line_error(capsys, generate.main(["--model", str(model_dir), "--prompt", "x"]), "does not match")


def test_empty_prompt(capsys, model_dir):
    assert_one_line_error(capsys, generate.main(["--model", str(model_dir), "--prompt", ""]), "prompt is empty")


def test_negative_temperature(capsys, model_dir):
    code = generate.main(["--model", str(model_dir), "--prompt", "x", "--temperature", "-1"])
    assert_one_line_error(capsys, code, "--temperature")


def test_unknown_flag_is_one_line(capsys):
    code = generate.main(["--prompt", "x", "--bogus"])  # argparse's exit is returned in-process too
    assert code == 2
    assert_one_line_error(capsys, code, "--bogus")


def test_eval_missing_file(capsys, model_dir, tmp_path):
    code = evaluate.main(["--model", str(model_dir), "--files", str(tmp_path / "none.py")])
    assert_one_line_error(capsys, code, "not a readable file")


def test_train_seq_len_over_context(capsys, tmp_path):
    code = train.main(["--preset", "test-mla", "--out", str(tmp_path / "r"), "--seq-len", "4096"])
    assert_one_line_error(capsys, code, "max_seq_len")


def test_generate_stdout_is_only_the_completion(model_dir, capfd):
    code = generate.main(
        ["--model", str(model_dir), "--prompt", "def f(", "--max-new-tokens", "8", "--temperature", "0"]
    )
    out, err = capfd.readouterr()
    assert code == 0
    assert "def f(" not in out and "[stats]" not in out
    assert "prompt tokens: 7" in err and "decode:" in err


def test_eval_json_last_line(model_dir, tmp_path, capsys):
    sample = tmp_path / "s.py"
    sample.write_text("print('hello world')\n" * 20)
    assert evaluate.main(["--model", str(model_dir), "--files", str(sample), "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bytes"] == sample.stat().st_size and 0 < result["bits_per_byte"] < 12
    assert result["gzip_bits_per_byte"] < 8


def test_console_script_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "omnicoder.cli.generate", "--model", str(tmp_path), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
