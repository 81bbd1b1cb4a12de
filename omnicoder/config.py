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
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "llama3", "longrope")
LAYER_TYPES = ("full_attention", "sliding_attention")
NORM_PLACEMENTS = ("pre", "sandwich", "post")
QK_NORM_SCOPES = ("head", "projection")
MLP_ACTIVATIONS = ("silu", "gelu_tanh")
# mixture-of-experts gating (omnicoder.moe): softmax over all experts then top-k (Qwen-MoE, OLMoE, Mixtral,
# DeepSeek-V2), top-k logits then softmax over the k (Granite-MoE), sigmoid scores (DeepSeek-V3)
MOE_GATINGS = ("softmax", "topk_softmax", "sigmoid")
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
    "moe_experts": 1 << 16,
    "moe_top_k": 1 << 16,
    "moe_hidden": 1 << 22,
    "moe_shared_hidden": 1 << 22,
    "moe_n_group": 1 << 16,
    "moe_topk_group": 1 << 16,
}
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
MAX_LIST_LEN = 1 << 16  # longest list field (per-layer lists, longrope factors per rotary frequency)


def _check_scalar(value: object, kind: str, where: str, limit: int | None) -> None:
    allowed = _TYPES[kind]
    if not isinstance(value, allowed) or (isinstance(value, bool) and kind != "bool"):
        raise OmniCoderError(f"{where} must be of type {kind}, got {str(value)[:40]!r}")
    if kind == "float" and not math.isfinite(value):  # type: ignore[arg-type]
        raise OmniCoderError(f"{where} must be a finite number, got {value}")
    if kind == "str" and len(value) > 200:  # type: ignore[arg-type]
        raise OmniCoderError(f"{where} is longer than 200 characters")
    if limit is not None and abs(value) > limit:  # type: ignore[arg-type]
        raise OmniCoderError(f"{where} {value} is over the limit of {limit}")


def check_types(obj: object, prefix: str = "config ") -> None:
    """Each dataclass field holds its declared type (an int is not a bool, a float is finite) within LIMITS.

    `list[T]` fields hold a JSON array (at most MAX_LIST_LEN items) of T.
    """
    for f in fields(obj):  # type: ignore[arg-type]
        value, kind, where = getattr(obj, f.name), str(f.type), f"{prefix}{f.name}"
        if kind.startswith("list[") and kind.endswith("]"):
            if not isinstance(value, list):
                raise OmniCoderError(f"{where} must be a list of {kind[5:-1]}, got {str(value)[:40]!r}")
            if len(value) > MAX_LIST_LEN:
                raise OmniCoderError(f"{where} has {len(value)} items, over the limit of {MAX_LIST_LEN}")
            for i, item in enumerate(value):
                _check_scalar(item, kind[5:-1], f"{where}[{i}]", None)
        elif kind in _TYPES:
            _check_scalar(value, kind, where, LIMITS.get(f.name))


def _copy_lists(data: dict[str, Any]) -> dict[str, Any]:
    """Shallow copies of list values, so a config never shares a list with the dict it was built from."""
    return {key: list(value) if isinstance(value, list) else value for key, value in data.items()}


@dataclass
class RopeScaling:
    """RoPE scaling recipe; `factor` stretches the trained context by that much.

    - none: plain RoPE.
    - linear: positions divided by `factor` (position interpolation).
    - yarn: NTK-by-parts interpolation between `beta_fast` and `beta_slow` rotations, plus the
      attention temperature `0.1 * ln(factor) + 1` (YaRN, Peng et al. 2023), or `attention_factor` when > 0
      (Hugging Face configs may set it explicitly, or imply it through mscale / mscale_all_dim).
    - llama3: Llama 3.1's frequency-banded scaling (`low_freq_factor`, `high_freq_factor`).
    - longrope: Phi-3.5 / Phi-4-mini (transformers' "longrope"/"su"): inverse frequencies divided by
      `short_factor` while a chunk's largest position + 1 <= original_max_position_embeddings, else by
      `long_factor` (one entry per rotary frequency each); cos/sin times `attention_factor` (0: derived,
      sqrt(1 + ln(f) / ln(original_max_position_embeddings)) with f = max_seq_len / original_max, 1 when f <= 1).
    """

    type: str = "none"
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    attention_factor: float = 0.0
    short_factor: list[float] = field(default_factory=list)
    long_factor: list[float] = field(default_factory=list)

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
        if self.type == "longrope":
            if not self.short_factor or len(self.short_factor) != len(self.long_factor):
                raise OmniCoderError(
                    "rope_scaling 'longrope' needs short_factor and long_factor lists of the same, non-zero length"
                )
            if min(self.short_factor + self.long_factor) <= 0:
                raise OmniCoderError("rope_scaling short_factor and long_factor entries must be > 0")
        elif self.short_factor or self.long_factor:
            raise OmniCoderError(
                f"rope_scaling short_factor/long_factor are only for type 'longrope', not {self.type!r}; remove them"
            )


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
    # per-layer attention and family features (issue #20); every default keeps the plain Llama-style decoder
    layer_types: list[str] = field(default_factory=list)
    rope_local_theta: float = 0.0
    nope_layers: list[int] = field(default_factory=list)
    rotary_dim: int = 0
    attention_scale: float = 0.0
    attn_logit_softcap: float = 0.0
    final_logit_softcap: float = 0.0
    norm_placement: str = "pre"
    qk_norm_scope: str = "head"
    mlp_activation: str = "silu"
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logit_multiplier: float = 1.0
    # sparse mixture-of-experts feed-forward (issue #21; omnicoder.moe); moe_experts 0 keeps every layer dense
    moe_experts: int = 0  # routed experts per MoE layer
    moe_top_k: int = 0  # experts each token is routed to
    moe_hidden: int = 0  # hidden width of one routed expert (fine-grained experts: smaller than mlp_hidden)
    moe_gating: str = "softmax"  # one of MOE_GATINGS
    moe_norm_topk: bool = False  # renormalise the k selected weights to sum to 1
    moe_routed_scale: float = 1.0  # routed experts' output times this (DeepSeek's routed_scaling_factor)
    moe_score_bias: bool = False  # a per-expert bias added to the scores for the choice only (DeepSeek-V3)
    moe_n_group: int = 0  # group-limited routing: experts in this many groups (0 or 1: none)
    moe_topk_group: int = 0  # ... of which the best moe_topk_group groups are eligible
    moe_shared_hidden: int = 0  # hidden width of the always-on shared expert (0: none)
    moe_shared_gate: bool = False  # the shared expert's output times sigmoid(linear(x)) (Qwen2-MoE)
    moe_dense_layers: list[int] = field(default_factory=list)  # layers that keep the dense MLP (mlp_hidden)
    moe_aux_loss_coef: float = 0.01  # training: weight of the load-balancing loss (omnicoder.moe.load_balancing_loss)
    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258
    tokenizer: str = "byte"

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**_copy_lists(self.rope_scaling))

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
        self._validate_layers()
        self._validate_family()
        self._validate_moe()
        return self

    def _validate_layers(self) -> None:
        """layer_types, nope_layers, rope_local_theta, rotary_dim and the longrope factor lengths."""
        if self.layer_types:
            if len(self.layer_types) != self.n_layers:
                raise OmniCoderError(
                    f"config layer_types has {len(self.layer_types)} entries for {self.n_layers} layers; "
                    "give one per layer or none"
                )
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown:
                raise OmniCoderError(
                    f"config layer_types entry {unknown[0]!r} is unknown; use {' or '.join(LAYER_TYPES)}"
                )
            if "sliding_attention" in self.layer_types and self.sliding_window <= 0:
                raise OmniCoderError("config layer_types has sliding_attention layers; set sliding_window > 0")
        if len(set(self.nope_layers)) != len(self.nope_layers):
            raise OmniCoderError("config nope_layers lists a layer twice; list each layer once")
        for index in self.nope_layers:
            if not 0 <= index < self.n_layers:
                raise OmniCoderError(f"config nope_layers entry {index} is not a layer index (0..{self.n_layers - 1})")
        if not 0 <= self.rope_local_theta <= 1e15:
            raise OmniCoderError(
                f"config rope_local_theta must be in [0, 1e15] (0: rope_theta), got {self.rope_local_theta}"
            )
        if self.rotary_dim < 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise OmniCoderError(
                f"config rotary_dim must be even and in [0, head_dim={self.head_dim}] (0: head_dim), "
                f"got {self.rotary_dim}"
            )
        if self.rope_scaling.type == "longrope" and len(self.rope_scaling.short_factor) != self.rope_dim // 2:
            raise OmniCoderError(
                f"config rope_scaling short_factor/long_factor need {self.rope_dim // 2} entries "
                f"(rotary dimensions / 2), got {len(self.rope_scaling.short_factor)}"
            )

    def _validate_family(self) -> None:
        """Scales, soft-caps, norm placement, qk-norm scope, activation, multipliers, and what MLA refuses."""
        for name in ("attention_scale", "attn_logit_softcap", "final_logit_softcap"):
            if getattr(self, name) < 0:
                raise OmniCoderError(f"config {name} must be >= 0 (0: off/default), got {getattr(self, name)}")
        for name in ("embedding_multiplier", "residual_multiplier", "logit_multiplier"):
            if getattr(self, name) <= 0:
                raise OmniCoderError(f"config {name} must be > 0 (1: off), got {getattr(self, name)}")
        choices = {
            "norm_placement": NORM_PLACEMENTS,
            "qk_norm_scope": QK_NORM_SCOPES,
            "mlp_activation": MLP_ACTIVATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise OmniCoderError(
                    f"config {name} {getattr(self, name)!r} is unknown; use one of {', '.join(allowed)}"
                )
        if self.qk_norm_scope == "projection" and not self.qk_norm:
            raise OmniCoderError("config qk_norm_scope 'projection' needs qk_norm true; set qk_norm or scope 'head'")
        if self.attention == "mla":
            refused = {
                "rotary_dim": self.rotary_dim != 0,
                "qk_norm_scope": self.qk_norm_scope != "head",
                "attn_logit_softcap": self.attn_logit_softcap != 0,
            }
            for name, bad in refused.items():
                if bad:
                    raise OmniCoderError(f"config {name} is not supported with mla; reset it to its default")

    def _validate_moe(self) -> None:
        """The MoE fields: all at their defaults for a dense model, consistent shapes and routing otherwise."""
        if self.moe_experts == 0:
            defaults = OmniCoderConfig()
            changed = [
                f.name
                for f in fields(self)
                if f.name.startswith("moe_")
                and f.name != "moe_aux_loss_coef"
                and getattr(self, f.name) != getattr(defaults, f.name)
            ]
            if changed:
                raise OmniCoderError(f"config {changed[0]} is set but moe_experts is 0; set moe_experts or reset it")
            return
        if self.moe_experts < 0 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise OmniCoderError(
                f"config moe_top_k must be in [1, moe_experts={self.moe_experts}], got {self.moe_top_k}"
            )
        if self.moe_hidden <= 0 or self.moe_shared_hidden < 0:
            raise OmniCoderError("config moe_hidden must be > 0 and moe_shared_hidden >= 0 (0: no shared expert)")
        if self.moe_gating not in MOE_GATINGS:
            raise OmniCoderError(
                f"config moe_gating {self.moe_gating!r} is unknown; use one of {', '.join(MOE_GATINGS)}"
            )
        if self.moe_routed_scale <= 0 or self.moe_aux_loss_coef < 0:
            raise OmniCoderError("config moe_routed_scale must be > 0 and moe_aux_loss_coef >= 0")
        if self.moe_shared_gate and not self.moe_shared_hidden:
            raise OmniCoderError("config moe_shared_gate needs a shared expert; set moe_shared_hidden > 0")
        self._validate_moe_groups()
        if len(set(self.moe_dense_layers)) != len(self.moe_dense_layers):
            raise OmniCoderError("config moe_dense_layers lists a layer twice; list each layer once")
        for index in self.moe_dense_layers:
            if not 0 <= index < self.n_layers:
                raise OmniCoderError(
                    f"config moe_dense_layers entry {index} is not a layer index (0..{self.n_layers - 1})"
                )

    def _validate_moe_groups(self) -> None:
        if self.moe_n_group <= 1:
            if self.moe_n_group < 0 or self.moe_topk_group not in (0, self.moe_n_group):
                raise OmniCoderError("config moe_topk_group needs moe_n_group > 1 (group-limited routing); reset it")
            return
        per_group = self.moe_experts // self.moe_n_group
        if self.moe_experts % self.moe_n_group or (self.moe_gating == "sigmoid" and per_group < 2):
            raise OmniCoderError(
                f"config moe_n_group {self.moe_n_group} must divide moe_experts {self.moe_experts}"
                + (" into groups of at least 2 (sigmoid gating ranks groups by their top-2)" if per_group else "")
            )
        if not 1 <= self.moe_topk_group <= self.moe_n_group or self.moe_top_k > self.moe_topk_group * per_group:
            raise OmniCoderError(
                f"config moe_topk_group must be in [1, moe_n_group] and keep at least moe_top_k experts eligible, "
                f"got {self.moe_topk_group}"
            )

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` has the MoE feed-forward (moe_experts > 0 and not in moe_dense_layers)."""
        return self.moe_experts > 0 and layer not in self.moe_dense_layers

    # -- per-layer settings ----------------------------------------------------------------------
    @property
    def rope_dim(self) -> int:
        """Rotated dimensions per head: rotary_dim or head_dim (GQA), rope_head_dim (MLA)."""
        if self.attention == "mla":
            return self.rope_head_dim
        return self.rotary_dim or self.head_dim

    def is_sliding(self, layer: int) -> bool:
        """Whether layer `layer` attends within sliding_window (layer_types, else every layer when window > 0)."""
        if self.layer_types:
            return self.layer_types[layer] == "sliding_attention"
        return self.sliding_window > 0

    def layer_window(self, layer: int) -> int:
        """Sliding window of layer `layer` in tokens; 0 for a full-attention layer."""
        return self.sliding_window if self.is_sliding(layer) else 0

    def uses_rope(self, layer: int) -> bool:
        """False for NoPE layers (nope_layers)."""
        return layer not in self.nope_layers

    def uses_local_rope(self, layer: int) -> bool:
        """True when layer `layer` is sliding and rope_local_theta > 0 (plain RoPE at rope_local_theta)."""
        return self.rope_local_theta > 0 and self.is_sliding(layer)

    @property
    def softmax_scale(self) -> float:
        """Attention softmax scale: attention_scale, else 1/sqrt(head_dim) (MLA: of the q·k width)."""
        if self.attention_scale > 0:
            return self.attention_scale
        width = self.head_dim if self.attention == "gqa" else self.head_dim + self.rope_head_dim
        return width**-0.5

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
            config = cls(**_copy_lists({**data, "rope_scaling": RopeScaling(**_copy_lists(scaling))}))
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
