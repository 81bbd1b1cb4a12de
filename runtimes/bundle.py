"""The bundle contract: a directory with manifest.json, the model file(s), tokenizer.json and sidecars.

Shared by exporters (write), runners, the bench and the apps (read). Torch-free. Reading a bundle
validates the manifest and sidecars against the JSON Schemas in `schemas/`, checks the format version,
rejects file paths that leave the bundle, and verifies every file's size and sha256 before use.
See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from omnicoder.runtimes import bundle_checks
from omnicoder.runtimes.input_files import (
    MAX_TOKENIZER_BYTES,
    SCHEMA_DIR,
    load_schema,
    parse_json,
    read_bytes,
    read_json,
    read_text,
    validate,
)

from omnicoder.errors import OmniCoderError

__all__ = ["SCHEMA_DIR", "Bundle", "finalize_bundle", "load_schema", "open_bundle", "safe_member", "validate"]

FORMAT = "omnicoder-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIDECAR_SCHEMAS = {"kv_paging": "kv_paging.schema.json", "retention": "retention.schema.json"}
FIX = "re-export the bundle with omnicoder-export"
MAX_NAME = 1024  # characters of a path in the manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_member(root: Path, name: str) -> Path:
    """Resolve a manifest path inside the bundle; reject absolute paths and paths that leave it."""
    pure = PurePosixPath(name)
    bad = pure.is_absolute() or ".." in pure.parts or name.strip() == "" or "\\" in name or "\x00" in name
    if bad or len(name) > MAX_NAME or any(len(part) > 255 for part in pure.parts):
        raise OmniCoderError(f"bundle file path {name[:MAX_NAME]!r} leaves the bundle; re-export the bundle")
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
    """A verified bundle on disk: its manifest, and its sidecars read and checked against it."""

    path: Path
    manifest: dict
    sidecars: dict[str, dict] = field(default_factory=dict)

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
        """A sidecar by kind (kv_paging, retention), schema-valid and consistent with the manifest; None if absent."""
        name = self.manifest["sidecars"].get(kind)
        if name is None:
            return None
        if kind not in self.sidecars:
            self.sidecars[kind] = read_sidecar(self, kind, name)
        return self.sidecars[kind]

    def tokenizer(self):
        """The bundle's tokenizer, read through input_files and checked against the model's vocabulary."""
        from omnicoder.runtimes.tokenizer_fields import tokenizer_fields

        from omnicoder.tokenizer import tokenizer_from_json

        name = self.manifest["tokenizer"]["file"]
        text = read_text(self.file(name), "bundle tokenizer", FIX, MAX_TOKENIZER_BYTES)
        spec = parse_json(text, f"bundle tokenizer {name}", FIX, check_depth=False)
        if self.manifest["tokenizer"]["type"] == "omnicoder-byte":
            bundle_checks.check_byte_tokenizer(self.manifest, spec, name)
        try:
            tokenizer = tokenizer_from_json(text, self.model["bos_id"], self.model["eos_id"], **tokenizer_fields(self))
        except OmniCoderError:
            raise
        except Exception as exc:  # the tokenizers library reports a malformed file as a bare Exception
            raise OmniCoderError(f"bundle tokenizer {name} cannot be loaded ({str(exc)[:200]}); {FIX}") from None
        if tokenizer.vocab_size > self.model["vocab_size"]:
            raise OmniCoderError(
                f"bundle tokenizer {name} has {tokenizer.vocab_size} tokens, more than model.vocab_size "
                f"{self.model['vocab_size']}: it could emit ids the model has no row for; {FIX}"
            )
        return tokenizer


def read_sidecar(bundle: Bundle, kind: str, name: str) -> dict:
    """Read a sidecar (schema-validated for the kinds we know) and cross-check it against the manifest."""
    data = read_json(bundle.file(name), "bundle sidecar", FIX, SIDECAR_SCHEMAS.get(kind))
    check = bundle_checks.SIDECAR_CHECKS.get(kind)
    if check is not None:
        check(bundle.manifest, data, name)
    return data


def read_manifest(root: Path) -> dict:
    """manifest.json: read, format and version checked, schema-valid and consistent in itself."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise OmniCoderError(f"{root} has no {MANIFEST}; it is not an OmniCoder bundle (re-export it)")
    manifest = read_json(manifest_path, "bundle manifest", FIX)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OmniCoderError(f"{manifest_path} is not an OmniCoder bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise OmniCoderError(
            f"bundle format version {str(version)[:40]} is not supported (this omnicoder reads version "
            f"{FORMAT_VERSION}); re-export the bundle with this version"
        )
    validate(manifest, "manifest.schema.json", str(manifest_path), FIX)
    bundle_checks.check_manifest(manifest)
    return manifest


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: schema, format version, paths, cross-checks of the manifest, sidecars and byte
    tokenizer, and (verify=True) sizes + sha256 of every file."""
    root = Path(path)
    if str(path) == "" or not root.is_dir():
        raise OmniCoderError(f"bundle {root} does not exist; export one with omnicoder-export --out {root}")
    manifest = read_manifest(root)
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
        if kind in SIDECAR_SCHEMAS:
            bundle.sidecar(kind)
    if manifest["tokenizer"]["type"] == "omnicoder-byte":
        tokenizer = manifest["tokenizer"]["file"]
        spec = read_json(bundle.file(tokenizer), "bundle tokenizer", FIX)
        bundle_checks.check_byte_tokenizer(manifest, spec, tokenizer)
    else:
        read_bytes(bundle.file(manifest["tokenizer"]["file"]), "bundle tokenizer", FIX, MAX_TOKENIZER_BYTES)
    return bundle
