"""The JSON files in profiles/ (device thresholds, device memory): where to find them and how to load them.
Torch-free."""

from __future__ import annotations

from pathlib import Path

from omnicoder.runtimes.input_files import read_json


def default_path(file_name: str) -> Path:
    """./profiles/FILE, else the one in the source checkout next to runtimes/."""
    here = Path("profiles") / file_name
    return here if here.is_file() else Path(__file__).resolve().parents[1] / "profiles" / file_name


def load_profile_file(path: Path, schema: str, flag: str) -> dict:
    """Read and schema-validate a profiles JSON file (runtimes/input_files.py); errors name the file and the flag
    that picks another."""
    return read_json(path, "profile file", f"fix it or pass {flag} FILE", schema)
