"""Import a local Hugging Face checkpoint of the Llama family into the model core (`--model hf:DIR`).

DIR holds config.json, safetensors weights (one file or a sharded index) and tokenizer.json. Supported:
Llama, Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm) and Phi-3 (fused qkv / gate_up
projections, split here). RoPE scaling: none/default, linear, llama3, yarn. Everything else is refused with
a one-line error naming the field. Reads files only: no network, no `transformers` needed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from omnicoder.config import OmniCoderConfig, RopeScaling
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.tokenizer import HFTokenizer

HF_PREFIX = "hf:"
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
}
# per family: bias on q/k/v (and no bias elsewhere), q/k RMSNorm, fused qkv + gate_up
FAMILY = {
    "llama": {"qkv_bias": False, "qk_norm": False, "fused": False},
    "mistral": {"qkv_bias": False, "qk_norm": False, "fused": False},
    "qwen2": {"qkv_bias": True, "qk_norm": False, "fused": False},
    "qwen3": {"qkv_bias": False, "qk_norm": True, "fused": False},
    "phi3": {"qkv_bias": False, "qk_norm": False, "fused": True},
}
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")
TRUE_FLAGS = ("mlp_bias", "attention_bias")  # bias layouts the core does not have (o_proj / MLP biases)


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


def family_of(hf: dict[str, Any]) -> str:
    """The supported family of an HF config, or a one-line error naming the architecture."""
    if any(hf.get(name) for name in MOE_FIELDS):
        raise OmniCoderError("mixture-of-experts checkpoints are not supported by hf: import (dense Llama family only)")
    architectures = hf.get("architectures") or []
    for arch in architectures:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    model_type = hf.get("model_type")
    if not architectures and model_type in FAMILY:
        return model_type
    found = ", ".join(architectures) or repr(model_type)
    raise OmniCoderError(f"architecture {found} is not supported by hf: import; supported: {', '.join(ARCHITECTURES)}")


def rope_scaling_from_hf(hf: dict[str, Any]) -> RopeScaling:
    """Map config.json's `rope_scaling` onto RopeScaling (none/default, linear, llama3, yarn)."""
    raw = hf.get("rope_scaling")
    if not raw:
        return RopeScaling()
    kind = raw.get("rope_type", raw.get("type", "default"))
    max_pos = int(hf.get("max_position_embeddings") or 0)
    if kind == "default":
        return RopeScaling()
    factor = float(raw.get("factor", 1.0))
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "llama3":
        if "original_max_position_embeddings" not in raw:
            raise OmniCoderError("rope_scaling llama3 needs original_max_position_embeddings; add it to config.json")
        return RopeScaling(
            "llama3",
            factor,
            int(raw["original_max_position_embeddings"]),
            low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
            high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
        )
    if kind == "yarn":
        if raw.get("truncate", True) is False:
            raise OmniCoderError("rope_scaling yarn with truncate=false is not supported by hf: import")
        attention_factor = raw.get("attention_factor")
        mscale, mscale_all_dim = raw.get("mscale"), raw.get("mscale_all_dim")
        if attention_factor is None and mscale and mscale_all_dim:

            def get_mscale(scale: float, m: float) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        return RopeScaling(
            "yarn",
            factor,
            int(raw.get("original_max_position_embeddings") or max_pos),
            beta_fast=float(raw.get("beta_fast") or 32.0),
            beta_slow=float(raw.get("beta_slow") or 1.0),
            attention_factor=float(attention_factor or 0.0),
        )
    raise OmniCoderError(
        f"rope_scaling type {kind!r} is not supported by hf: import; supported: default, linear, llama3, yarn"
    )


def _sliding_window(hf: dict[str, Any], family: str) -> int:
    """The one window of every layer (0: none); per-layer mixes (Qwen2's max_window_layers) are refused."""
    if family == "llama":
        return 0
    if family in ("qwen2", "qwen3"):
        types = hf.get("layer_types")
        if not types:  # older configs: layers from max_window_layers on slide when use_sliding_window is set
            n = int(hf.get("num_hidden_layers") or 0)
            first = min(int(hf.get("max_window_layers", n)), n) if hf.get("use_sliding_window") else n
            types = ["full_attention"] * first + ["sliding_attention"] * (n - first)
        if len(set(types)) > 1:
            raise OmniCoderError(
                "per-layer sliding windows (max_window_layers / mixed layer_types) are not supported; "
                "set use_sliding_window false or use the same attention in every layer"
            )
        if set(types) != {"sliding_attention"}:
            return 0
    return int(hf.get("sliding_window") or 0)


def _token_id(value: Any, fallback: int) -> int:
    if isinstance(value, list):  # e.g. Llama 3: several EOS ids; the first is eos_id, all are stop ids
        value = value[0] if value else None
    return fallback if value is None else int(value)


def config_from_hf(hf: dict[str, Any], name: str = "hf-model") -> OmniCoderConfig:
    """The OmniCoderConfig of an HF config.json (validated), or a one-line error naming the unsupported field."""
    family = family_of(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise OmniCoderError(f"hidden_act {hf['hidden_act']!r} is not supported by hf: import (SwiGLU with silu only)")
    for flag in TRUE_FLAGS:
        if hf.get(flag) and not (flag == "attention_bias" and family == "qwen2"):
            raise OmniCoderError(f"{flag}=true is not supported by hf: import for {family} (o_proj / MLP biases)")
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise OmniCoderError("partial_rotary_factor != 1 is not supported by hf: import (RoPE on the whole head)")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [key for key in required if not hf.get(key)]
    if missing:
        raise OmniCoderError(f"config.json lacks {', '.join(missing)}; it is not a Llama-family config")
    heads = int(hf["num_attention_heads"])
    eos = _token_id(hf.get("eos_token_id"), 0)
    bos = _token_id(hf.get("bos_token_id"), eos)
    return OmniCoderConfig(
        name=name,
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        mlp_hidden=int(hf["intermediate_size"]),
        attention="gqa",
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rope_scaling=rope_scaling_from_hf(hf),
        max_seq_len=int(hf.get("max_position_embeddings") or 2048),
        qk_norm=FAMILY[family]["qk_norm"],
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=FAMILY[family]["qkv_bias"],
        sliding_window=_sliding_window(hf, family),
        bos_id=bos,
        eos_id=eos,
        pad_id=_token_id(hf.get("pad_token_id"), eos),
        tokenizer="hf",
    ).validate()


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


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_RENAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}


def convert_state(tensors: dict[str, torch.Tensor], config: OmniCoderConfig) -> dict[str, torch.Tensor]:
    """HF tensor names -> ours (float32); Phi-3's fused qkv_proj and gate_up_proj are split."""
    c = config
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in tensors.items():
        name = hf_name.removeprefix("model.")
        tensor = tensor.float()
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "embed_tokens.weight":
            out["embed.weight"] = tensor
        elif name in ("norm.weight", "lm_head.weight"):
            out[name] = tensor
        elif match := _LAYER.match(name):
            layer, rest = match.groups()
            prefix = f"layers.{layer}."
            if rest in _RENAMES:
                out[prefix + _RENAMES[rest]] = tensor
            elif rest == "self_attn.qkv_proj.weight":
                sizes = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim)
                for part, piece in zip(("q", "k", "v"), tensor.split(sizes, dim=0), strict=True):
                    out[f"{prefix}attn.{part}_proj.weight"] = piece.contiguous()
            elif rest == "mlp.gate_up_proj.weight":
                gate, up = tensor.chunk(2, dim=0)
                out[prefix + "mlp.gate_proj.weight"], out[prefix + "mlp.up_proj.weight"] = gate.contiguous(), up
            elif rest.startswith("self_attn."):
                out[prefix + "attn." + rest.removeprefix("self_attn.")] = tensor
            elif rest.startswith("mlp."):
                out[prefix + rest] = tensor
            else:
                raise OmniCoderError(f"checkpoint tensor {hf_name} has no counterpart in the model core")
        else:
            raise OmniCoderError(f"checkpoint tensor {hf_name} has no counterpart in the model core")
    if c.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def model_from_hf(path: Path) -> OmniCoder:
    """Build the OmniCoder of an HF directory with its weights (float32, eval mode)."""
    config = config_from_hf(read_hf_config(path), name=f"hf-{path.resolve().name}")
    return model_from_state(config, load_hf_tensors(path), str(path))


def model_from_state(config: OmniCoderConfig, tensors: dict[str, torch.Tensor], path: str) -> OmniCoder:
    """The OmniCoder of `config` with HF-named `tensors` (from `path`, named in errors), float32, eval mode."""
    state = convert_state(tensors, config)
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
