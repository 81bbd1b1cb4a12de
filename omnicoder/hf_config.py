"""Hugging Face config.json -> OmniCoderConfig, per family (torch-free).

Families: Llama, Mistral, Qwen2, Qwen3, Phi-3 (Phi-3.5 / Phi-4-mini: partial rotary, longrope), Gemma 2,
Gemma 3 text, Granite 3.x, SmolLM3, OLMo 2, and the mixture-of-experts families Qwen2-MoE, Qwen3-MoE, OLMoE,
Granite-MoE, Mixtral, DeepSeek-V2/V3 (their routing and DeepSeek's MLA: omnicoder.hf_moe). RoPE comes from
omnicoder.hf_rope (both transformers generations). Anything the core cannot compute is refused with one line
naming the missing feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.hf_moe import DEEPSEEK, deepseek_attention, moe_fields, without_mla_rope_keys
from omnicoder.hf_rope import LAYER_TYPES, read_rope


@dataclass(frozen=True)
class Family:
    """What a family's transformers modeling code does beyond Llama's."""

    theta: float = 10000.0  # transformers' default rope_theta of the config class
    local_theta: float = 0.0  # default base of sliding layers (Gemma 3's rope_local_base_freq)
    qkv_bias: bool = False  # q/k/v biases without an o_proj bias (Qwen2)
    qk_norm: str = ""  # "head" or "projection"
    fused: bool = False  # qkv_proj / gate_up_proj (Phi-3)
    gemma: bool = False  # (1 + w) norms, sqrt(d) embedding scale, query_pre_attn_scalar, soft-caps
    norm_placement: str = "pre"
    window: str = "none"  # none | all (every layer when sliding_window is set) | types | types_if_enabled
    granite: bool = False  # embedding / residual / attention multipliers, logits_scaling
    nope: bool = False  # SmolLM3's no_rope_layers
    tie: bool = False  # transformers' default tie_word_embeddings (save_pretrained omits it when True and default)
    moe: bool = False  # sparse mixture-of-experts layers (omnicoder.hf_moe)


FAMILIES = {
    "llama": Family(),
    "mistral": Family(window="all"),
    "qwen2": Family(qkv_bias=True, window="types_if_enabled"),
    "qwen3": Family(qk_norm="head", window="types_if_enabled"),
    "phi3": Family(fused=True, window="all"),
    "gemma2": Family(gemma=True, norm_placement="sandwich", window="types", tie=True),
    "gemma3_text": Family(
        theta=1_000_000.0,
        local_theta=10000.0,
        gemma=True,
        qk_norm="head",
        norm_placement="sandwich",
        window="types",
        tie=True,
    ),
    "granite": Family(granite=True),
    "smollm3": Family(theta=2_000_000.0, window="types_if_enabled", nope=True, tie=True),
    "olmo2": Family(qk_norm="projection", norm_placement="post"),
    "qwen2_moe": Family(qkv_bias=True, moe=True),
    "qwen3_moe": Family(qk_norm="head", window="all", moe=True),
    "olmoe": Family(qk_norm="projection", moe=True),
    "granitemoe": Family(granite=True, moe=True),
    "mixtral": Family(theta=1_000_000.0, window="all", moe=True),
    "deepseek_v2": Family(moe=True),
    "deepseek_v3": Family(moe=True),
}
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "GraniteForCausalLM": "granite",
    "SmolLM3ForCausalLM": "smollm3",
    "Olmo2ForCausalLM": "olmo2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "OlmoeForCausalLM": "olmoe",
    "GraniteMoeForCausalLM": "granitemoe",
    "MixtralForCausalLM": "mixtral",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}
# families people ask for that the core cannot compute yet: the missing feature, not only the class
REFUSED = {
    "Gemma3ForConditionalGeneration": "the vision tower and the multimodal wrapper (import the text model, "
    "Gemma3ForCausalLM / model_type gemma3_text)",
    "GemmaForCausalLM": "Gemma 1 (not checked against transformers yet; Gemma 2 and 3 are supported)",
    "OlmoForCausalLM": "OLMo 1's LayerNorm without weights and q/k/v clipping",
    "StableLmForCausalLM": "LayerNorm with bias (and per-head q/k LayerNorm)",
    "Starcoder2ForCausalLM": "LayerNorm with bias and a non-gated GELU MLP with biases",
    "CohereForCausalLM": "parallel attention + MLP blocks over one LayerNorm, and logit_scale",
    "GPTNeoXForCausalLM": "parallel residual blocks with LayerNorm and a non-gated MLP",
    "Lfm2ForCausalLM": "short-convolution layers (a hybrid, not a pure attention decoder)",
    "Phi3SmallForCausalLM": "block-sparse attention and a GEGLU MLP",
    "PhiForCausalLM": "parallel blocks with LayerNorm and a non-gated MLP",
    "GraniteMoeSharedForCausalLM": "Granite-MoE's shared MLP (shared_intermediate_size; GraniteMoe is supported)",
    "GraniteMoeHybridForCausalLM": "Mamba-2 layers (a hybrid, not a pure attention decoder)",
    "PhimoeForCausalLM": "sparsemixer routing and LayerNorm with bias",
    "JetMoeForCausalLM": "mixture-of-attention-heads layers",
}
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def family_of(hf: dict[str, Any]) -> str:
    """The supported family of an HF config, or a one-line error naming what is missing."""
    family = _named_family(hf)
    if not FAMILIES[family].moe and any(hf.get(name) for name in MOE_FIELDS):
        raise OmniCoderError(
            f"mixture-of-experts fields in a {family} config.json are not supported by hf: import (MoE families: "
            f"{', '.join(name for name, f in FAMILIES.items() if f.moe)})"
        )
    return family


def _named_family(hf: dict[str, Any]) -> str:
    architectures = hf.get("architectures") or []
    for arch in architectures:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    for arch in architectures:
        if arch in REFUSED:
            raise OmniCoderError(f"architecture {arch} is not supported by hf: import: it needs {REFUSED[arch]}")
    model_type = hf.get("model_type")
    if not architectures and model_type in FAMILIES:
        return model_type
    found = ", ".join(architectures) or repr(model_type)
    raise OmniCoderError(f"architecture {found} is not supported by hf: import; supported: {', '.join(ARCHITECTURES)}")


def _token_id(value: Any, fallback: int) -> int:
    if isinstance(value, list):  # e.g. Llama 3: several EOS ids; the first is eos_id, all are stop ids
        value = value[0] if value else None
    return fallback if value is None else int(value)


def _float(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key)
    return default if value is None else float(value)


def layer_types(hf: dict[str, Any], family: str, n_layers: int) -> tuple[list[str], int]:
    """(layer_types for the core, sliding_window): [] means every layer alike (sliding when the window > 0)."""
    kind = FAMILIES[family].window
    window = int(hf.get("sliding_window") or 0)
    if kind == "none" or (kind == "types_if_enabled" and not hf.get("use_sliding_window")):
        return [], 0
    if kind == "all":
        return [], window
    types = hf.get("layer_types")
    if types is None:
        types = _derived_layer_types(hf, family, n_layers)
    if not isinstance(types, list) or len(types) != n_layers:
        raise OmniCoderError(f"config.json layer_types must list {n_layers} layer types; fix config.json")
    unknown = sorted({t for t in types if t not in LAYER_TYPES} - {None})
    if unknown or None in types:
        raise OmniCoderError(
            f"layer type {(unknown or [None])[0]!r} is not supported by hf: import; supported: {', '.join(LAYER_TYPES)}"
        )
    if "sliding_attention" in types and window <= 0:
        if kind == "types_if_enabled":  # transformers: sliding_window None -> those layers attend fully
            return [], 0
        raise OmniCoderError("config.json has sliding_attention layers but no sliding_window; set sliding_window")
    if set(types) == {"full_attention"}:
        return [], 0
    if set(types) == {"sliding_attention"}:
        return [], window
    return list(types), window


def _derived_layer_types(hf: dict[str, Any], family: str, n: int) -> list[str]:
    """Layer types of configs older than transformers' layer_types field."""
    if family == "gemma2":  # even layers slide
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if family == "gemma3_text":
        pattern = int(hf.get("sliding_window_pattern") or 6)
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    if family == "smollm3":
        nope = hf.get("no_rope_layers") or [1] * n
        return ["sliding_attention" if not nope[i] else "full_attention" for i in range(n)]
    first = min(int(hf.get("max_window_layers", n)), n)  # Qwen2/3: layers from max_window_layers on slide
    return ["full_attention"] * first + ["sliding_attention"] * (n - first)


def _nope_layers(hf: dict[str, Any], n: int) -> list[int]:
    flags = hf.get("no_rope_layers")
    if flags is None:
        interval = int(hf.get("no_rope_layer_interval") or 4)
        flags = [int((i + 1) % interval != 0) for i in range(n)]
    if not isinstance(flags, list) or len(flags) != n:
        raise OmniCoderError(f"config.json no_rope_layers must list {n} flags (1: RoPE, 0: none); fix config.json")
    return [i for i, use_rope in enumerate(flags) if not use_rope]


def _activation(hf: dict[str, Any], family: Family) -> str:
    name = hf.get("hidden_activation") if family.gemma else None
    name = name or hf.get("hidden_act") or ("gelu_pytorch_tanh" if family.gemma else "silu")
    if name not in ACTIVATIONS:
        raise OmniCoderError(
            f"hidden_act {name!r} is not supported by hf: import (gated MLP with silu or gelu_pytorch_tanh only)"
        )
    return ACTIVATIONS[name]


def _check_biases(hf: dict[str, Any], family: str) -> None:
    if hf.get("mlp_bias"):
        raise OmniCoderError(f"mlp_bias=true is not supported by hf: import for {family} (the core has no MLP biases)")
    if hf.get("attention_bias") and family != "qwen2":
        raise OmniCoderError(
            f"attention_bias=true is not supported by hf: import for {family} (it biases o_proj, "
            "which the core does not have)"
        )


def _rotary_dim(fraction: float, head_dim: int) -> int:
    if fraction == 1.0:
        return 0
    rotary = int(head_dim * fraction)
    if not 0 < fraction < 1 or rotary % 2:
        raise OmniCoderError(
            f"partial_rotary_factor {fraction} gives {rotary} rotated dims of {head_dim}; it must give an even number"
        )
    return rotary


def _gemma_fields(hf: dict[str, Any], head_dim: int, d_model: int) -> dict[str, Any]:
    scalar = _float(hf, "query_pre_attn_scalar", float(head_dim))
    return {
        "attention_scale": scalar**-0.5,
        "attn_logit_softcap": _float(hf, "attn_logit_softcapping", 0.0),
        "final_logit_softcap": _float(hf, "final_logit_softcapping", 0.0),
        "embedding_multiplier": d_model**0.5,  # the core computes it in the model dtype, as transformers does
    }


def _granite_fields(hf: dict[str, Any]) -> dict[str, Any]:
    logits_scaling = _float(hf, "logits_scaling", 1.0)
    if logits_scaling == 0:
        raise OmniCoderError("config.json logits_scaling must not be 0; fix config.json")
    return {
        "embedding_multiplier": _float(hf, "embedding_multiplier", 1.0),
        "residual_multiplier": _float(hf, "residual_multiplier", 1.0),
        "attention_scale": _float(hf, "attention_multiplier", 1.0),
        "logit_multiplier": 1.0 / logits_scaling,
    }


def config_from_hf(hf: dict[str, Any], name: str = "hf-model") -> OmniCoderConfig:
    """The OmniCoderConfig of an HF config.json (validated), or a one-line error naming the unsupported field."""
    family_name = family_of(hf)
    family = FAMILIES[family_name]
    activation = _activation(hf, family)
    _check_biases(hf, family_name)
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [key for key in required if not hf.get(key)]
    if missing:
        raise OmniCoderError(f"config.json lacks {', '.join(missing)}; it is not a Llama-family config")
    heads, d_model, n_layers = int(hf["num_attention_heads"]), int(hf["hidden_size"]), int(hf["num_hidden_layers"])
    head_dim = int(hf.get("head_dim") or d_model // heads)
    rope = read_rope(without_mla_rope_keys(hf, family_name), family.theta, family.local_theta)
    types, window = layer_types(hf, family_name, n_layers)
    eos = _token_id(hf.get("eos_token_id"), 0)
    bos = _token_id(hf.get("bos_token_id"), eos)
    fields: dict[str, Any] = {}
    if family.gemma:
        fields.update(_gemma_fields(hf, head_dim, d_model))
    if family.granite:
        fields.update(_granite_fields(hf))
    if family.nope:
        fields["nope_layers"] = _nope_layers(hf, n_layers)
    if family.moe:
        fields.update(moe_fields(hf, family_name, n_layers))
    attention: dict[str, Any] = {"attention": "gqa", "head_dim": head_dim}
    if family_name in DEEPSEEK:
        attention = deepseek_attention(hf, family_name)
    elif family_name == "qwen2_moe":  # Qwen2-MoE names its q/k/v biases qkv_bias
        fields["attention_bias"] = bool(hf.get("qkv_bias", True))
    sliding = "sliding_attention" in types or (window > 0 and not types)
    return OmniCoderConfig(
        name=name,
        vocab_size=int(hf["vocab_size"]),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        mlp_hidden=int(hf["intermediate_size"]),
        rope_theta=rope.theta,
        rope_scaling=rope.scaling,
        rope_local_theta=rope.local_theta if sliding else 0.0,
        rotary_dim=_rotary_dim(rope.rotary_fraction, head_dim),
        max_seq_len=int(hf.get("max_position_embeddings") or 2048),
        qk_norm=bool(family.qk_norm),
        qk_norm_scope=family.qk_norm or "head",
        norm_eps=_float(hf, "rms_norm_eps", 1e-6),
        norm_placement=family.norm_placement,
        mlp_activation=activation,
        tie_embeddings=bool(hf.get("tie_word_embeddings", family.tie)),
        attention_bias=fields.pop("attention_bias", family.qkv_bias),
        sliding_window=window,
        layer_types=types,
        bos_id=bos,
        eos_id=eos,
        pad_id=_token_id(hf.get("pad_token_id"), eos),
        tokenizer="hf",
        **attention,
        **fields,
    ).validate()
