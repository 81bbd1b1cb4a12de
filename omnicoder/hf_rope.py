"""RoPE settings of a Hugging Face config.json, as either transformers generation writes them.

- transformers 4.x: top-level `rope_theta` and `rope_scaling` (a dict with `rope_type` or the older `type`),
  Gemma 3's `rope_local_base_freq` for its sliding layers, `partial_rotary_factor`, and Phi-3's top-level
  `original_max_position_embeddings`.
- transformers 5.x: `rope_parameters`, either one dict (`rope_type`, `rope_theta`, the scaling fields) or one
  dict per layer type (`{"full_attention": {...}, "sliding_attention": {...}}`, Gemma 3).

A layout this module does not understand (an unknown key holding "rope", an unknown field in a RoPE dict, a
missing `rope_theta` in `rope_parameters`, two generations that disagree) is refused with one line, never
defaulted. A config without any RoPE field gets its family's transformers default base, as transformers does.
Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omnicoder.config import RopeScaling
from omnicoder.errors import OmniCoderError

# fields a RoPE dict (4.x rope_scaling or one 5.x rope_parameters entry) may carry
ROPE_FIELDS = {
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
    "truncate",
    "short_factor",
    "long_factor",
    "partial_rotary_factor",
}
# top-level keys with "rope" in their name that are read here or by hf_config (anything else is an unknown layout)
KNOWN_ROPE_KEYS = {
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_local_base_freq",
    "partial_rotary_factor",
    "no_rope_layers",
    "no_rope_layer_interval",
}
LAYER_TYPES = ("full_attention", "sliding_attention")
SUPPORTED = "default, linear, llama3, yarn, longrope"


@dataclass(frozen=True)
class RopeLayout:
    """What the model core needs: base, scaling of full layers, base of sliding layers, rotated fraction."""

    theta: float
    scaling: RopeScaling
    local_theta: float = 0.0  # 0: sliding layers use theta and scaling too
    rotary_fraction: float = 1.0  # partial_rotary_factor


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OmniCoderError(f"config.json {where} must be a number, got {str(value)[:40]!r}; fix config.json")
    return float(value)


def _factors(raw: dict[str, Any], key: str, where: str) -> list[float]:
    values = raw.get(key)
    if not isinstance(values, list) or not values:
        raise OmniCoderError(f"config.json {where} longrope needs a non-empty {key} list; fix config.json")
    return [_number(v, f"{where}.{key}") for v in values]


def _check_fields(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise OmniCoderError(f"config.json {where} must be an object, got {str(raw)[:40]!r}; unknown RoPE layout")
    unknown = sorted(set(raw) - ROPE_FIELDS)
    if unknown:
        raise OmniCoderError(
            f"config.json {where} has unknown RoPE field(s) {', '.join(unknown)}; this RoPE layout is not supported"
        )
    return raw


def scaling_from_dict(raw: dict[str, Any] | None, hf: dict[str, Any], where: str) -> RopeScaling:
    """A RoPE dict (4.x rope_scaling, or a 5.x rope_parameters entry) -> RopeScaling; unknown types refused."""
    if not raw:
        return RopeScaling()
    raw = _check_fields(raw, where)
    kind = raw.get("rope_type", raw.get("type", "default"))
    max_pos = int(hf.get("max_position_embeddings") or 0)
    if kind == "default":
        return RopeScaling()
    factor = _number(raw.get("factor", 1.0), f"{where}.factor")
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "llama3":
        if "original_max_position_embeddings" not in raw:
            raise OmniCoderError(f"{where} llama3 needs original_max_position_embeddings; add it to config.json")
        return RopeScaling(
            "llama3",
            factor,
            int(raw["original_max_position_embeddings"]),
            low_freq_factor=_number(raw.get("low_freq_factor", 1.0), f"{where}.low_freq_factor"),
            high_freq_factor=_number(raw.get("high_freq_factor", 4.0), f"{where}.high_freq_factor"),
        )
    if kind == "yarn":
        return _yarn(raw, factor, max_pos, where)
    if kind in ("longrope", "su"):
        return _longrope(raw, hf, where)
    raise OmniCoderError(f"{where} type {kind!r} is not supported by hf: import; supported: {SUPPORTED}")


def _yarn(raw: dict[str, Any], factor: float, max_pos: int, where: str) -> RopeScaling:
    if raw.get("truncate", True) is False:
        raise OmniCoderError(f"{where} yarn with truncate=false is not supported by hf: import")
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


def _longrope(raw: dict[str, Any], hf: dict[str, Any], where: str) -> RopeScaling:
    """transformers' _compute_longrope_parameters: a top-level original_max_position_embeddings (Phi-3) sets
    factor = max_position_embeddings / original; the attention factor is derived from it unless given."""
    max_pos = int(hf.get("max_position_embeddings") or 0)
    original = hf.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings")
    if original:
        original = int(original)
        factor = max_pos / original
    else:
        original = max_pos
        factor = _number(raw.get("factor", 1.0), f"{where}.factor")
    if original <= 0:
        raise OmniCoderError(f"{where} longrope needs original_max_position_embeddings or max_position_embeddings")
    attention_factor = raw.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeScaling(
        "longrope",
        max(factor, 1.0),
        original,
        attention_factor=_number(attention_factor, f"{where}.attention_factor"),
        short_factor=_factors(raw, "short_factor", where),
        long_factor=_factors(raw, "long_factor", where),
    )


def _theta(entry: dict[str, Any], where: str) -> float:
    if "rope_theta" not in entry:
        raise OmniCoderError(f"config.json {where} lacks rope_theta; this RoPE layout is not supported")
    theta = _number(entry["rope_theta"], f"{where}.rope_theta")
    if theta <= 0:
        raise OmniCoderError(f"config.json {where}.rope_theta must be > 0, got {theta}")
    return theta


def _split_parameters(params: Any) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """5.x rope_parameters -> (name, entry of full layers, entry of sliding layers or None)."""
    if not isinstance(params, dict) or not params:
        raise OmniCoderError(
            f"config.json rope_parameters must be a non-empty object, got {str(params)[:40]!r}; unknown RoPE layout"
        )
    if set(params) <= set(LAYER_TYPES) and all(isinstance(v, dict) for v in params.values()):
        if "full_attention" not in params:  # every layer sliding: its entry serves as the only one
            name = "rope_parameters.sliding_attention"
            return name, _check_fields(params["sliding_attention"], name), None
        name = "rope_parameters.full_attention"
        full, sliding = _check_fields(params[name.split(".")[1]], name), params.get("sliding_attention")
        return name, full, None if sliding is None else _check_fields(sliding, "rope_parameters.sliding_attention")
    if any(isinstance(v, dict) for v in params.values()):
        kinds = sorted(k for k, v in params.items() if isinstance(v, dict))
        raise OmniCoderError(
            f"config.json rope_parameters has entries for layer type(s) {', '.join(kinds)}; "
            f"only {', '.join(LAYER_TYPES)} are supported"
        )
    return "rope_parameters", _check_fields(params, "rope_parameters"), None


def _rotary_fraction(hf: dict[str, Any], entry: dict[str, Any]) -> float:
    top, inner = hf.get("partial_rotary_factor"), entry.get("partial_rotary_factor")
    if top is not None and inner is not None and float(top) != float(inner):
        raise OmniCoderError(
            f"config.json partial_rotary_factor {top} disagrees with rope_parameters' {inner}; fix config.json"
        )
    value = inner if inner is not None else top
    return 1.0 if value is None else _number(value, "partial_rotary_factor")


def _check_keys(hf: dict[str, Any]) -> None:
    unknown = sorted(k for k in hf if "rope" in k.lower() and k not in KNOWN_ROPE_KEYS)
    if unknown:
        raise OmniCoderError(
            f"config.json has unknown RoPE field(s) {', '.join(unknown)}; this RoPE layout is not supported"
        )


def _from_parameters(hf: dict[str, Any], params: Any) -> RopeLayout:
    name, full, sliding = _split_parameters(params)
    theta = _theta(full, name)
    scaling = scaling_from_dict(full, hf, name)
    top_theta = hf.get("rope_theta")
    if top_theta is not None and _number(top_theta, "rope_theta") != theta:
        raise OmniCoderError(
            f"config.json rope_theta {top_theta} disagrees with rope_parameters' {theta}; keep one of them"
        )
    if hf.get("rope_scaling") and scaling_from_dict(hf["rope_scaling"], hf, "rope_scaling") != scaling:
        raise OmniCoderError("config.json rope_scaling disagrees with rope_parameters; keep one of them")
    local = 0.0
    if sliding is not None:
        if scaling_from_dict(sliding, hf, "rope_parameters.sliding_attention").type != "none":
            raise OmniCoderError(
                "config.json rope_parameters.sliding_attention is scaled; "
                "only plain RoPE on sliding layers is supported"
            )
        local_theta = _theta(sliding, "rope_parameters.sliding_attention")
        if local_theta != theta or scaling.type != "none":
            local = local_theta
    return RopeLayout(theta, scaling, local, _rotary_fraction(hf, full))


def read_rope(hf: dict[str, Any], default_theta: float, local_default: float = 0.0) -> RopeLayout:
    """The RoPE layout of an HF config of either transformers generation (see the module docstring).

    default_theta: the family's transformers default base, used only when no RoPE field is present;
    local_default: the family's default base of sliding layers (Gemma 3: 10000) when the 4.x config omits it."""
    _check_keys(hf)
    params = hf.get("rope_parameters")
    if params is not None:
        return _from_parameters(hf, params)
    theta = _number(hf.get("rope_theta", default_theta), "rope_theta")
    if theta <= 0:
        raise OmniCoderError(f"config.json rope_theta must be > 0, got {theta}")
    scaling = scaling_from_dict(hf.get("rope_scaling"), hf, "rope_scaling")
    local = hf.get("rope_local_base_freq", local_default)
    local = 0.0 if local is None else _number(local, "rope_local_base_freq")
    return RopeLayout(theta, scaling, local, _rotary_fraction(hf, hf.get("rope_scaling") or {}))
