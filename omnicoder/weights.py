"""Load and save models as config.json + model.safetensors (never pickle), and resolve model names.

`resolve_model_dir("default")` is the embedded default model shipped inside the package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory
from omnicoder.model import OmniCoder
from omnicoder.paths import resolve_model_dir

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def state_dict_for_saving(model: OmniCoder) -> dict[str, torch.Tensor]:
    """The model's tensors, without the tied LM head (it aliases the embedding)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(model: OmniCoder, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors (+ extra text files) atomically into out_dir."""
    with atomic_directory(out_dir) as tmp:
        model.config.save(tmp / CONFIG_FILE)
        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out_dir)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise OmniCoderError(
            f"{path} is not a readable safetensors file ({exc}); re-download or re-export it"
        ) from None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise OmniCoderError(
            f"{path} is not a readable safetensors file ({str(exc)[:200]}); re-download or re-export it"
        ) from None


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """The tensors `config` implies, from a model built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        skeleton = OmniCoder(config)
    shapes = {key: tuple(t.shape) for key, t in skeleton.state_dict().items()}
    if config.tie_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def load_model(name: str | Path, dtype: torch.dtype = torch.float32) -> OmniCoder:
    """Load a model from `default` or a directory with config.json + model.safetensors.

    The safetensors header is checked against the config before any tensor is read or allocated, so a config
    that asks for a huge model next to a small file is one line, not an exhausted machine."""
    model_dir = resolve_model_dir(name)
    config = OmniCoderConfig.load(model_dir / CONFIG_FILE)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise OmniCoderError(f"{weights} is missing; a model directory needs config.json and {WEIGHTS_FILE}")
    found, expected = weight_shapes(weights), expected_shapes(config)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise OmniCoderError(
            f"{weights} does not match config.json (missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    for key, shape in found.items():
        if shape != expected[key]:
            raise OmniCoderError(f"{weights}: {key} has shape {shape}, config.json implies another")
    state = load_state(weights)
    model = OmniCoder(config)
    model.load_state_dict(state, strict=False)
    return model.to(dtype).eval()
