"""Model configuration: a validated dataclass with a JSON round-trip.

Torch-free on purpose: runtimes and exporters read configs without loading the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omnicoder.errors import OmniCoderError

ATTENTION_KINDS = ("gqa", "mla")
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "llama3")
# upper bounds of the shape fields (the bundle schema's bounds; a config beyond them cannot be exported or loaded)
LIMITS = {
    "vocab_size": 1 << 24,
    "d_model": 1 << 20,
    "n_layers": 1024,
    "n_heads": 4096,
    "n_kv_heads": 4096,
    "head_dim": 65536,
    "mlp_hidden": 1 << 22,
    "kv_latent_dim": 65536,
    "rope_head_dim": 65536,
    "max_seq_len": 1 << 24,
    "n_mtp": 64,
    "sliding_window": 1 << 24,
    "original_max_position_embeddings": 1 << 24,
}
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_types(obj: object, prefix: str = "config ") -> None:
    """Each dataclass field holds its declared type (an int is not a bool, a float is finite) within LIMITS."""
    for f in fields(obj):  # type: ignore[arg-type]
        value, allowed = getattr(obj, f.name), _TYPES.get(str(f.type))
        if allowed is None:
            continue
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and f.type != "bool")
        if wrong:
            raise OmniCoderError(f"{prefix}{f.name} must be of type {f.type}, got {str(value)[:40]!r}")
        if f.type == "float" and not math.isfinite(value):
            raise OmniCoderError(f"{prefix}{f.name} must be a finite number, got {value}")
        if f.type == "str" and len(value) > 200:
            raise OmniCoderError(f"{prefix}{f.name} is longer than 200 characters")
        if f.name in LIMITS and abs(value) > LIMITS[f.name]:
            raise OmniCoderError(f"{prefix}{f.name} {value} is over the limit of {LIMITS[f.name]}")


@dataclass
class RopeScaling:
    """RoPE scaling recipe; `factor` stretches the trained context by that much.

    - none: plain RoPE.
    - linear: positions divided by `factor` (position interpolation).
    - yarn: NTK-by-parts interpolation between `beta_fast` and `beta_slow` rotations, plus the
      attention temperature `0.1 * ln(factor) + 1` (YaRN, Peng et al. 2023), or `attention_factor` when > 0
      (Hugging Face configs may set it explicitly, or imply it through mscale / mscale_all_dim).
    - llama3: Llama 3.1's frequency-banded scaling (`low_freq_factor`, `high_freq_factor`).
    """

    type: str = "none"
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    attention_factor: float = 0.0

    def validate(self) -> None:
        check_types(self, "rope_scaling.")
        if self.type not in ROPE_SCALING_TYPES:
            raise OmniCoderError(
                f"rope_scaling.type {self.type!r} is unknown; use one of {', '.join(ROPE_SCALING_TYPES)}"
            )
        if self.factor < 1.0:
            raise OmniCoderError(f"rope_scaling.factor must be >= 1, got {self.factor}")
        if self.attention_factor < 0:
            raise OmniCoderError(
                f"rope_scaling.attention_factor must be >= 0 (0: derived), got {self.attention_factor}"
            )
        if self.type != "none" and self.type != "linear" and self.original_max_position_embeddings <= 0:
            raise OmniCoderError(f"rope_scaling.type {self.type!r} needs original_max_position_embeddings > 0")


@dataclass
class OmniCoderConfig:
    """Shape and options of an OmniCoder decoder.

    `attention` is "gqa" (n_heads query heads sharing n_kv_heads KV heads; MHA when equal, MQA when 1)
    or "mla" (latent-KV attention: the cache holds a `kv_latent_dim` latent plus a `rope_head_dim`
    decoupled RoPE key per token per layer).
    """

    name: str = "omnicoder"
    vocab_size: int = 272
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 64
    mlp_hidden: int = 704
    attention: str = "gqa"
    kv_latent_dim: int = 0
    rope_head_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_seq_len: int = 2048
    qk_norm: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False
    n_mtp: int = 0
    retention_head: bool = False
    sliding_window: int = 0
    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258
    tokenizer: str = "byte"

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> OmniCoderConfig:
        """Raise OmniCoderError naming the first impossible setting; return self when valid."""
        check_types(self)
        if not isinstance(self.rope_scaling, RopeScaling):
            raise OmniCoderError("config rope_scaling must be an object")
        if not 0 < self.rope_theta <= 1e15 or not 0 < self.norm_eps < 1:
            raise OmniCoderError("config rope_theta must be in (0, 1e15] and norm_eps in (0, 1)")
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_hidden", "max_seq_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise OmniCoderError(f"config {name} must be > 0, got {getattr(self, name)}")
        if self.attention not in ATTENTION_KINDS:
            raise OmniCoderError(f"config attention {self.attention!r} is unknown; use 'gqa' or 'mla'")
        if self.attention == "gqa":
            if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
                raise OmniCoderError(
                    f"config n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
                )
            if self.head_dim % 2:
                raise OmniCoderError(f"config head_dim must be even for RoPE, got {self.head_dim}")
        else:
            if self.kv_latent_dim <= 0:
                raise OmniCoderError("config attention 'mla' needs kv_latent_dim > 0")
            if self.rope_head_dim <= 0 or self.rope_head_dim % 2:
                raise OmniCoderError("config attention 'mla' needs an even rope_head_dim > 0")
            if self.qk_norm:
                raise OmniCoderError(
                    "config qk_norm is not supported with mla (it breaks weight absorption); set qk_norm false"
                )
        for name in ("n_mtp", "sliding_window"):
            if getattr(self, name) < 0:
                raise OmniCoderError(f"config {name} must be >= 0, got {getattr(self, name)}")
        ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        for name, value in ids.items():
            if not 0 <= value < self.vocab_size:
                raise OmniCoderError(f"config {name}={value} is outside the vocabulary (size {self.vocab_size})")
        self.rope_scaling.validate()
        return self

    # -- derived shapes ------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Heads in the KV cache: n_kv_heads for GQA, 1 (the shared latent) for MLA."""
        return self.n_kv_heads if self.attention == "gqa" else 1

    @property
    def kv_key_dim(self) -> int:
        """Width of one cached key row: head_dim (GQA) or latent + RoPE key (MLA)."""
        return self.head_dim if self.attention == "gqa" else self.kv_latent_dim + self.rope_head_dim

    @property
    def kv_value_dim(self) -> int:
        """Width of one cached value row: head_dim (GQA) or 0 (MLA; values are the key's latent part)."""
        return self.head_dim if self.attention == "gqa" else 0

    @property
    def kv_floats_per_token_per_layer(self) -> int:
        return self.kv_heads * (self.kv_key_dim + self.kv_value_dim)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniCoderConfig:
        if not isinstance(data, dict):
            raise OmniCoderError("config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OmniCoderError(f"config has unknown field(s) {', '.join(unknown)}; remove them")
        scaling = data.get("rope_scaling") or {}
        if not isinstance(scaling, dict):
            raise OmniCoderError("config rope_scaling must be an object")
        try:
            config = cls(**{**data, "rope_scaling": RopeScaling(**scaling)})
        except TypeError as exc:
            raise OmniCoderError(f"config rope_scaling is invalid: {exc}") from None
        return config.validate()

    @classmethod
    def from_json(cls, text: str) -> OmniCoderConfig:
        from omnicoder.runtimes.input_files import parse_json

        return cls.from_dict(parse_json(text, "config", "fix or re-export it"))

    @classmethod
    def load(cls, path: str | Path) -> OmniCoderConfig:
        """config.json through runtimes/input_files.py (size limit, UTF-8, strict JSON), then types and values."""
        from omnicoder.runtimes.input_files import read_json

        return cls.from_dict(read_json(path, "model config", "fix or re-export it"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())
