"""The bundle contract: schema-valid, checksummed, atomic, and strict about what it reads."""

import json
import shutil

import pytest
from omnicoder.runtimes.bundle import FORMAT_VERSION, open_bundle, validate

from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(bundles["mla-fp32"][2], path)
    return path


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_describes_the_bundle(bundles):
    for name in ("mla-fp32", "gqa-int4"):
        bundle = open_bundle(bundles[name][2])
        m = bundle.manifest
        assert m["format"] == "omnicoder-bundle" and m["format_version"] == FORMAT_VERSION
        expected = {"model.onnx", "tokenizer.json", "model.kv_paging.json", "model.retention.json"}
        # onnxruntime-genai can run GQA bundles with fp32/fp16 KV: they carry its config (export/genai_config.py)
        assert set(m["files"]) == expected | ({"genai_config.json"} if name.startswith("gqa") else set())
        assert m["graph"]["kv"]["kind"] == ("mla-latent" if name.startswith("mla") else "gqa")
        assert m["export"]["seconds"] > 0 and m["export"]["peak_rss_mb"] > 0
        paging = bundle.sidecar("kv_paging")
        assert {"page_len", "n_layers", "heads", "dl"} <= set(paging)
        assert paging["n_layers"] == m["model"]["n_layers"]
    mla = open_bundle(bundles["mla-fp32"][2]).sidecar("kv_paging")
    assert (mla["heads"], mla["dl"], mla["rope_dim"], mla["value_dim"]) == (1, 32, 8, 0)


def test_tampered_file_is_rejected(bundle_copy):
    with open(bundle_copy / "model.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(OmniCoderError, match="checksum mismatch for bundle file model.onnx"):
        open_bundle(bundle_copy)


def test_truncated_file_is_rejected(bundle_copy):
    (bundle_copy / "tokenizer.json").write_text("{}")
    with pytest.raises(OmniCoderError, match="tokenizer.json has 2 bytes"):
        open_bundle(bundle_copy)


def test_unknown_format_version(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(OmniCoderError, match="format version 99 is not supported"):
        open_bundle(bundle_copy)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "a/../../x"])
def test_paths_that_leave_the_bundle(bundle_copy, bad):
    def change(m):
        m["files"][bad] = m["files"].pop("tokenizer.json")

    edit_manifest(bundle_copy, change)
    with pytest.raises(OmniCoderError, match="leaves the bundle"):
        open_bundle(bundle_copy)


def test_schema_violation_names_the_field(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["model"].update(n_layers="two"))
    with pytest.raises(OmniCoderError, match="model/n_layers"):
        open_bundle(bundle_copy)


def test_bad_sidecar_is_rejected():
    with pytest.raises(OmniCoderError, match="page_len"):
        validate({"page_len": 0, "n_layers": 2, "heads": 1, "dl": 8}, "kv_paging.schema.json", "sidecar")
    with pytest.raises(OmniCoderError):  # neither heads nor heads_per_layer
        validate({"page_len": 64, "n_layers": 2, "dl": 8}, "kv_paging.schema.json", "sidecar")
    validate(
        {"page_len": 64, "n_layers": 2, "heads_per_layer": [1, 2], "dl_per_layer": [8, 8], "spill_bytes": 0},
        "kv_paging.schema.json",
        "sidecar",
    )


def test_missing_bundle_and_missing_manifest(tmp_path):
    with pytest.raises(OmniCoderError, match="does not exist"):
        open_bundle(tmp_path / "nope")
    with pytest.raises(OmniCoderError, match="no manifest.json"):
        open_bundle(tmp_path)


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path):
    target = tmp_path / "bundle"
    for text in ("one", "two"):
        with atomic_directory(target) as tmp:
            (tmp / "f").write_text(text)
    assert (target / "f").read_text() == "two" and len(list(tmp_path.iterdir())) == 1
