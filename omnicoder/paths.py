"""Where models live: the embedded default model inside the package, or a user directory. Torch-free."""

from __future__ import annotations

from pathlib import Path

from omnicoder.errors import OmniCoderError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "omnicoder-tiny"
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models" / DEFAULT_MODEL_NAME


def resolve_model_dir(name: str | Path) -> Path:
    """`default` (or the default model's name) -> the embedded model; anything else must be a directory."""
    if str(name) in ("default", DEFAULT_MODEL_NAME):
        path = DEFAULT_MODEL_DIR
        if not (path / "model.safetensors").is_file():
            raise OmniCoderError(f"the embedded default model is missing from {path}; reinstall omnicoder")
        return path
    path = Path(name)
    if not path.is_dir():
        raise OmniCoderError(
            f"model directory {path} does not exist; pass --model default or a directory with config.json"
        )
    if not (path / "config.json").is_file():
        raise OmniCoderError(f"{path} has no config.json; pass a directory written by omnicoder-train or save_model")
    return path
