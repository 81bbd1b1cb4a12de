"""omnicoder-export --out never costs a user data: what may be replaced, checked before the export and at the
swap; stale temporary folders of killed exports are cleaned; bad weights and configs are refused before any
ONNX work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omnicoder.export import cli as export_cli
from omnicoder.export.out_dir import check_out, check_replaceable

from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory, clean_stale, replacement_guard
from omnicoder.weights import save_model

GOOD = Path(__file__).resolve().parent / "vectors" / "bundles" / "good"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("user-dir", "is not an OmniCoder bundle"),
        ("file", "is a file"),
        ("bundle+extra", r"not part of its bundle \(precious.txt\)"),
        ("modified", "pass --force"),
    ],
)
def test_refused_outs_keep_everything(tmp_path, layout, needle):
    out = tmp_path / "out"
    if layout == "file":
        out.write_text("mine\n")
    else:
        if layout != "user-dir":
            shutil.copytree(GOOD, out)
        out.mkdir(exist_ok=True)
        if layout in ("user-dir", "bundle+extra"):
            (out / "precious.txt").write_text("precious\n")
        if layout == "modified":
            (out / "tokenizer.json").write_text("{}")
    before = sorted(p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file())
    with pytest.raises(OmniCoderError, match=needle):
        check_out(str(out), force=False)
    after = sorted(p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file())
    assert before == after


def test_what_may_be_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ["", "  ", ".", "..", "/", str(tmp_path), "x" * 300, "a\x00b"]:
        with pytest.raises(OmniCoderError, match="--out"):
            check_out(bad, force=True)
    assert check_out("new/nested/out", force=False) == tmp_path / "new/nested/out"
    assert not (tmp_path / "new").exists()  # the check writes nothing
    (tmp_path / "empty").mkdir()
    check_out("empty", force=False)
    shutil.copytree(GOOD, tmp_path / "bundle")
    check_out("bundle", force=False)  # an unchanged bundle: a re-export replaces it, as it always did
    (tmp_path / "bundle" / "model.onnx").write_bytes(b"edited")
    with pytest.raises(OmniCoderError, match="pass --force"):
        check_out("bundle", force=False)
    check_out("bundle", force=True)
    (tmp_path / "link").symlink_to(tmp_path / "bundle")
    with pytest.raises(OmniCoderError, match="symbolic link"):
        check_out("link", force=True)


def test_the_swap_rechecks_and_leaves_the_target_alone(tmp_path):
    target = tmp_path / "out"
    shutil.copytree(GOOD, target)
    guard = replacement_guard(lambda path: check_replaceable(path, "out", True))
    with pytest.raises(OmniCoderError, match="not part of its bundle"), guard, atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_text("new")
        (target / "notes.txt").write_text("written meanwhile\n")  # a file appears during the export
    assert (target / "notes.txt").read_text() == "written meanwhile\n"
    assert (target / "model.onnx").read_bytes() == (GOOD / "model.onnx").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left either


def test_atomic_directory_never_replaces_a_file(tmp_path):
    (tmp_path / "out").write_text("mine\n")
    with pytest.raises(OmniCoderError, match="not a directory"), atomic_directory(tmp_path / "out"):
        pass
    assert (tmp_path / "out").read_text() == "mine\n"


def test_stale_temporaries_of_dead_writers_are_cleaned(tmp_path):
    dead = dead_pid()
    target = tmp_path / "out"
    (tmp_path / f".out.tmp-{dead}-abcd").mkdir()
    (tmp_path / f".out.tmp-{dead}-abcd" / "half.onnx").write_text("half")
    live = tmp_path / f".out.tmp-{__import__('os').getpid()}-live"
    live.mkdir()
    (tmp_path / f".out.old-{dead}").mkdir()  # a kill between the renames: the old bundle, target missing
    (tmp_path / f".out.old-{dead}" / "manifest.json").write_text("{}")
    (tmp_path / ".other.tmp-1-x").mkdir()
    clean_stale(target)
    assert (target / "manifest.json").read_text() == "{}"  # put back
    assert not (tmp_path / f".out.tmp-{dead}-abcd").exists()
    assert live.exists() and (tmp_path / ".other.tmp-1-x").exists()  # a live writer's, and another target's
    with atomic_directory(target) as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.tmp-1-x", live.name, "out"])


@pytest.fixture
def model_dir(tmp_path):
    from omnicoder.model import OmniCoder
    from omnicoder.presets import gqa_test_config

    torch.manual_seed(0)
    return save_model(OmniCoder(gqa_test_config()).eval(), tmp_path / "model")


def test_nan_weights_are_refused_before_export(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_dir / "model.safetensors"))
    first = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[first][0] = float("nan")
    save_file(state, str(model_dir / "model.safetensors"))
    code = export_cli.main(["--model", str(model_dir), "--weights", "fp32", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "NaN or Inf" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"n_layers": "4"}, "n_layers must be of type int"),
        ({"n_layers": True}, "n_layers must be of type int"),
        ({"d_model": 10**9}, "over the limit"),
        ({"rope_theta": 1e400}, "overflows"),
        ({"norm_eps": 0}, "norm_eps"),
    ],
)
def test_config_types_are_checked_before_weights(model_dir, tmp_path, capsys, change, needle):
    config = json.loads((model_dir / "config.json").read_text())
    text = json.dumps({**config, **change}).replace("Infinity", "1e400")
    (model_dir / "config.json").write_text(text)
    (model_dir / "model.safetensors").write_bytes(b"not read")  # the config is refused first
    code = export_cli.main(["--model", str(model_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_a_config_asking_for_a_huge_model_allocates_nothing(model_dir, tmp_path, capsys):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "n_layers": 1024, "d_model": 65536}))
    code = export_cli.main(["--model", str(model_dir), "--out", str(tmp_path / "out")])
    assert code == 2 and "does not match config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (b"\xff{}", "not valid UTF-8"),
        (b'{"num_hidden_layers": "32"}', "num_hidden_layers"),
        (b'{"rope_theta": NaN}', "NaN"),
        (b"[" * 50000, "too deeply"),
    ],
)
def test_hf_config_is_read_through_the_input_checks(tmp_path, capsys, config, needle):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_bytes(config)
    code = export_cli.main(["--model", f"hf:{tmp_path / 'hf'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_a_real_export_replaces_a_bundle_it_may_and_nothing_else(model_dir, tmp_path):
    """One real export: --force over a modified bundle replaces exactly the bundle; the sibling file stays."""
    out = tmp_path / "out"
    shutil.copytree(GOOD, out)
    (out / "tokenizer.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("keep\n")
    code = export_cli.main(["--model", str(model_dir), "--weights", "fp32", "--out", str(out), "--force"])
    assert code == 0
    assert json.loads((out / "manifest.json").read_text())["model"]["name"] == "test-gqa"
    assert (tmp_path / "keep.txt").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "model", "out"]


def test_train_retention_out_keeps_user_files(tmp_path, capsys):
    from omnicoder.cli import train_retention

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert train_retention.main(["--model", "default", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "would not write again (notes.txt)" in err and err.count("\n") == 1
    assert (out / "notes.txt").read_text() == "mine\n"
