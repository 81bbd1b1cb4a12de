"""omnicoder-package-app-assets: verified bundles copied atomically into the right sample app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omnicoder.runtimes.bundle import finalize_bundle, open_bundle
from omnicoder.runtimes.package_app_assets import APPS, main, package

from omnicoder.errors import OmniCoderError

GOOD = Path(__file__).resolve().parent / "vectors" / "bundles" / "good"
ANDROID = Path(APPS["onnx"][2])
IOS = Path(APPS["coreml"][2])


@pytest.fixture
def apps(tmp_path) -> Path:
    """A checkout with both app projects (their markers only)."""
    root = tmp_path / "repo"
    (root / APPS["onnx"][1]).parent.mkdir(parents=True)
    (root / APPS["onnx"][1]).write_text("// android app\n")
    (root / APPS["coreml"][1]).mkdir(parents=True)
    return root


def retarget(tmp_path: Path, target: str, kv_io: str | None = None) -> Path:
    """The good vector bundle re-exported as another target (a Core ML one holds a .mlpackage directory)."""
    out = tmp_path / f"bundle-{target}-{kv_io}"
    shutil.copytree(GOOD, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    if target == "coreml":
        (out / "model.onnx").unlink()
        (out / "model.mlpackage" / "Data").mkdir(parents=True)
        (out / "model.mlpackage" / "Data" / "weights.bin").write_bytes(b"\x00\x01weights")
        (out / "model.mlpackage" / "Manifest.json").write_text("{}")
        manifest["graph"]["file"] = "model.mlpackage"
    if target == "executorch":
        (out / "model.onnx").rename(out / "model.pte")
        manifest["graph"]["file"] = "model.pte"
        manifest["graph"]["executorch"] = {"kv_mode": "io", "max_seq_len": manifest["model"]["context_length"]}
    manifest["target"] = target
    if kv_io:
        manifest["graph"]["kv"]["io"] = kv_io
    del manifest["files"]
    finalize_bundle(out, manifest)
    return out


def test_onnx_bundle_goes_to_android_verified(apps, tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(GOOD, source)
    (source / "stray.txt").write_text("not in the manifest")
    assert main(["--bundle", str(source), "--apps-root", str(apps)]) == 0
    dest = apps / ANDROID
    bundle = open_bundle(dest)
    assert bundle.manifest["target"] == "onnx"
    assert sorted(p.name for p in dest.iterdir()) == [
        "manifest.json",
        "model.kv_paging.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert (dest / "model.onnx").read_bytes() == (GOOD / "model.onnx").read_bytes()
    assert not (apps / IOS).exists()
    captured = capsys.readouterr()
    assert "android: copied" in captured.out and "ios: no coreml bundle given" in captured.err


def test_both_apps_and_replacing_an_old_bundle(apps, tmp_path):
    coreml = retarget(tmp_path, "coreml")
    (apps / ANDROID).mkdir(parents=True)
    (apps / ANDROID / "old-model.onnx").write_text("old")
    assert main(["--bundle", str(GOOD), "--bundle", str(coreml), "--apps-root", str(apps)]) == 0
    assert not (apps / ANDROID / "old-model.onnx").exists()
    ios = open_bundle(apps / IOS)
    assert ios.manifest["target"] == "coreml"
    assert (apps / IOS / "model.mlpackage" / "Data" / "weights.bin").read_bytes() == b"\x00\x01weights"


@pytest.mark.parametrize("case", ["changed_byte", "path_parent", "missing_file"])
def test_tampered_bundle_is_refused_and_nothing_changes(apps, case, capsys):
    (apps / ANDROID).mkdir(parents=True)
    (apps / ANDROID / "keep.txt").write_text("previous bundle")
    assert main(["--bundle", str(GOOD.parent / case), "--apps-root", str(apps)]) == 2
    assert "error:" in capsys.readouterr().err
    assert [p.name for p in (apps / ANDROID).iterdir()] == ["keep.txt"]


def test_wrong_target_for_the_app(apps, tmp_path):
    with pytest.raises(OmniCoderError, match="--app ios needs a coreml bundle"):
        package(GOOD, apps, "ios")
    with pytest.raises(OmniCoderError, match="executorch bundle"):
        package(retarget(tmp_path, "executorch"), apps)
    with pytest.raises(OmniCoderError, match="more than one bundle for the android app"):
        main.__wrapped__(["--bundle", str(GOOD), "--bundle", str(GOOD), "--apps-root", str(apps)])
    with pytest.raises(OmniCoderError, match="exported with --kv-io shared .* re-export without --kv-io"):
        package(retarget(tmp_path, "onnx", kv_io="shared"), apps)
    assert not (apps / ANDROID).exists()


def test_missing_app_project(tmp_path):
    root = tmp_path / "repo"
    (root / "ios-app").mkdir(parents=True)
    with pytest.raises(OmniCoderError, match="android app project is missing"):
        package(GOOD, root)
    with pytest.raises(OmniCoderError, match="no android-app/ or ios-app/"):
        main.__wrapped__(["--bundle", str(GOOD), "--apps-root", str(tmp_path / "nowhere")])


def test_the_real_apps_have_the_expected_layout():
    from omnicoder.runtimes.package_app_assets import SOURCE_ROOT, find_apps_root

    assert find_apps_root() in (Path.cwd(), SOURCE_ROOT)
    for _, marker, dest in APPS.values():
        assert (SOURCE_ROOT / marker).exists(), marker
        assert (SOURCE_ROOT / dest).parent.name in ("assets", "Resources")
