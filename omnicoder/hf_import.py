"""Import a local Hugging Face checkpoint into the model core (`--model hf:DIR`).

DIR holds config.json, safetensors weights (one file or a sharded index) and tokenizer.json. The config is
translated by omnicoder.hf_config (families, both transformers generations' RoPE layouts: omnicoder.hf_rope),
the tensors renamed by omnicoder.hf_families, the tokenizer's fields read by omnicoder.hf_tokenizer_fields.
Everything unsupported is refused with a one-line error naming the field or the missing feature. Reads files
only: no network, no `transformers` needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.hf_config import ARCHITECTURES, FAMILIES, config_from_hf, family_of
from omnicoder.hf_families import convert_state
from omnicoder.hf_moe import rope_interleaved
from omnicoder.model import OmniCoder
from omnicoder.tokenizer import HFTokenizer

HF_PREFIX = "hf:"
__all__ = ["ARCHITECTURES", "config_from_hf", "family_of", "load_hf_model_and_tokenizer", "model_from_state"]


def is_hf_name(name: str | Path) -> bool:
    return str(name).startswith(HF_PREFIX)


def hf_directory(name: str | Path) -> Path:
    """`hf:DIR` (or DIR) -> a directory that has config.json; a one-line error otherwise."""
    path = Path(str(name).removeprefix(HF_PREFIX))
    if not path.is_dir():
        raise OmniCoderError(f"Hugging Face model directory {path} does not exist; pass --model hf:DIR")
    if not (path / "config.json").is_file():
        raise OmniCoderError(f"{path} has no config.json; save the model with save_pretrained first")
    return path


def read_hf_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise OmniCoderError(f"{path / 'config.json'} is not valid JSON ({exc.msg}); fix or re-save it") from None
    if not isinstance(data, dict):
        raise OmniCoderError(f"{path / 'config.json'} is not a JSON object")
    return data


# ---- weights -------------------------------------------------------------------------------------------


def load_hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint: model.safetensors, or the shards of model.safetensors.index.json."""
    from omnicoder.weights import load_state

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise OmniCoderError(f"{index} is not a safetensors index (no weight_map); re-save the model") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise OmniCoderError(f"shard {shard} named in {index.name} is missing from {path}")
            tensors.update(load_state(path / shard))
        return tensors
    single = path / "model.safetensors"
    if single.is_file():
        return load_state(single)
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise OmniCoderError(
            f"{path} has only pickle weights; hf: import reads safetensors (save_pretrained(safe_serialization=True))"
        )
    raise OmniCoderError(f"{path} has no model.safetensors or model.safetensors.index.json")


def model_from_hf(path: Path) -> OmniCoder:
    """Build the OmniCoder of an HF directory with its weights (float32, eval mode)."""
    hf = read_hf_config(path)
    config = config_from_hf(hf, name=f"hf-{path.resolve().name}")
    family = family_of(hf)
    tensors = load_hf_tensors(path)
    return model_from_state(config, tensors, str(path), FAMILIES[family].gemma, rope_interleaved(hf, family))


def model_from_state(
    config: OmniCoderConfig,
    tensors: dict[str, torch.Tensor],
    path: str,
    fold_norms: bool = False,
    rope_interleaved: bool = False,
) -> OmniCoder:
    """The OmniCoder of `config` with HF-named `tensors` (from `path`, named in errors), float32, eval mode.
    fold_norms: the checkpoint's RMSNorms compute x * (1 + w) (Gemma); rope_interleaved: its MLA RoPE rotates
    adjacent pairs (DeepSeek)."""
    state = convert_state(tensors, config, fold_norms, rope_interleaved)
    model = OmniCoder(config)
    expected = model.state_dict()
    wanted = set(expected) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        raise OmniCoderError(
            f"{path} weights do not match its config.json (missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise OmniCoderError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_hf_model_and_tokenizer(name: str | Path) -> tuple[OmniCoder, HFTokenizer]:
    """`hf:DIR` -> (model, tokenizer from DIR/tokenizer.json, with the checkpoint's add_bos, stop ids and chat
    template: omnicoder.hf_tokenizer_fields)."""
    from omnicoder.hf_tokenizer_fields import read_checkpoint_fields

    path = hf_directory(name)
    model = model_from_hf(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise OmniCoderError(f"{path} has no tokenizer.json; save a fast tokenizer there (tokenizer.save_pretrained)")
    c = model.config
    text = tokenizer_file.read_text(encoding="utf-8")
    tokenizer = HFTokenizer(text, bos_id=c.bos_id, eos_id=c.eos_id)
    tokenizer.set_fields(**read_checkpoint_fields(path, read_hf_config(path), json.loads(text), tokenizer))
    if tokenizer.vocab_size > c.vocab_size:
        raise OmniCoderError(
            f"tokenizer.json has {tokenizer.vocab_size} tokens but the model's vocab_size is {c.vocab_size}"
        )
    return model, tokenizer
