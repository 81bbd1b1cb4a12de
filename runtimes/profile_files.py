"""The JSON files in profiles/ (device thresholds, device memory): where to find them and how to load them.
Torch-free."""

from __future__ import annotations

import json
from pathlib import Path

from omnicoder.errors import OmniCoderError


def default_path(file_name: str) -> Path:
    """./profiles/FILE, else the one in the source checkout next to runtimes/."""
    here = Path("profiles") / file_name
    return here if here.is_file() else Path(__file__).resolve().parents[1] / "profiles" / file_name


def load_profile_file(path: Path, schema: str, flag: str) -> dict:
    """Read and schema-validate a profiles JSON file; errors name the file and the flag that picks another."""
    from omnicoder.runtimes.bundle import validate

    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise OmniCoderError(f"{path} does not exist; pass {flag} FILE") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise OmniCoderError(f"cannot read {path}: {exc}") from None
    validate(document, schema, str(path))
    return document
