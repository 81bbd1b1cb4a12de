"""The bundle contract: a directory with manifest.json, the model file(s), tokenizer.json and sidecars.

Shared by exporters (write), runners, the bench and the apps (read). Torch-free. Reading a bundle
validates the manifest and sidecars against the JSON Schemas in `schemas/`, checks the format version,
rejects file paths that leave the bundle, and verifies every file's size and sha256 before use.
See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from omnicoder.errors import OmniCoderError

FORMAT = "omnicoder-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SIDECAR_SCHEMAS = {"kv_paging": "kv_paging.schema.json", "retention": "retention.schema.json"}


@cache
def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


def validate(document: Any, schema_name: str, what: str) -> None:
    """Raise OmniCoderError naming the first schema violation of `document`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise OmniCoderError(f"{what} is invalid at {where}: {err.message}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_member(root: Path, name: str) -> Path:
    """Resolve a manifest path inside the bundle; reject absolute paths and paths that leave it."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.strip() == "" or "\\" in name:
        raise OmniCoderError(f"bundle file path {name!r} leaves the bundle; re-export the bundle")
    path = (root / pure).resolve()
    if root.resolve() not in path.parents:
        raise OmniCoderError(f"bundle file path {name!r} leaves the bundle; re-export the bundle")
    return path


def finalize_bundle(directory: Path, manifest: dict) -> dict:
    """Hash every file in `directory` into the manifest, validate it and the sidecars, write manifest.json."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    validate(manifest, "manifest.schema.json", "manifest.json")
    for kind, name in manifest["sidecars"].items():
        if kind in SIDECAR_SCHEMAS:
            validate(json.loads((directory / name).read_text()), SIDECAR_SCHEMAS[kind], name)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return safe_member(self.path, name)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def graph(self) -> dict:
        return self.manifest["graph"]

    @property
    def shared_kv(self) -> bool:
        """Whether the graph keeps its KV in buffers bound as both past and present (`--kv-io shared`)."""
        return self.graph.get("kv", {}).get("io") == "shared"

    def sidecar(self, kind: str) -> dict | None:
        name = self.manifest["sidecars"].get(kind)
        if name is None:
            return None
        data = json.loads(self.file(name).read_text())
        if kind in SIDECAR_SCHEMAS:
            validate(data, SIDECAR_SCHEMAS[kind], name)
        return data

    def tokenizer(self):
        from omnicoder.tokenizer import load_tokenizer

        return load_tokenizer(self.file(self.manifest["tokenizer"]["file"]), self.model["bos_id"], self.model["eos_id"])


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: schema, format version, paths, and (verify=True) sizes + sha256 of every file."""
    root = Path(path)
    if not root.is_dir():
        raise OmniCoderError(f"bundle {root} does not exist; export one with omnicoder-export --out {root}")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise OmniCoderError(f"{root} has no {MANIFEST}; it is not an OmniCoder bundle (re-export it)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise OmniCoderError(f"{manifest_path} is not valid JSON ({exc.msg}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OmniCoderError(f"{manifest_path} is not an OmniCoder bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise OmniCoderError(
            f"bundle format version {version} is not supported (this omnicoder reads version {FORMAT_VERSION}); "
            "re-export the bundle with this version"
        )
    validate(manifest, "manifest.schema.json", str(manifest_path))
    for name, entry in manifest["files"].items():
        member = safe_member(root, name)
        if not member.is_file():
            raise OmniCoderError(f"bundle file {name} is missing from {root}; re-export or re-copy the bundle")
        if verify:
            size = member.stat().st_size
            if size != entry["bytes"]:
                raise OmniCoderError(
                    f"bundle file {name} has {size} bytes, the manifest says {entry['bytes']}: corrupt"
                )
            if sha256_file(member) != entry["sha256"]:
                raise OmniCoderError(f"checksum mismatch for bundle file {name}: the bundle is corrupt or was modified")
    needed = [manifest["graph"]["file"], manifest["tokenizer"]["file"], *manifest["sidecars"].values()]
    for name in needed:  # a directory (a Core ML .mlpackage) counts when files under it are listed
        if name not in manifest["files"] and not any(f.startswith(f"{name}/") for f in manifest["files"]):
            raise OmniCoderError(f"manifest.json refers to {name}, which is not in its file list; re-export")
    bundle = Bundle(root, manifest)
    for kind in manifest["sidecars"]:
        bundle.sidecar(kind)
    return bundle
