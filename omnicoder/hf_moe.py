"""Mixture-of-experts families of a Hugging Face config.json -> the core's moe_* fields and DeepSeek's MLA (torch-free).

Routing as transformers 4.57 computes it, per family:
- Qwen2-MoE: softmax then top-k, norm_topk_prob, a shared expert gated by sigmoid(shared_expert_gate(x));
  layers outside mlp_only_layers and on decoder_sparse_step are sparse.
- Qwen3-MoE: the same without a shared expert. OLMoE: softmax then top-k, norm_topk_prob, experts of
  intermediate_size, every layer sparse. Mixtral: softmax then top-k, always renormalised.
- Granite-MoE: the top-k logits, then a softmax over those k (experts stored merged: input_linear / output_linear).
- DeepSeek-V2: softmax, greedy or group_limited_greedy top-k (groups ranked by their best score), weights times
  routed_scaling_factor, never renormalised (transformers' DeepseekV2MoEGate reads norm_topk_prob but does not
  apply it), shared experts of moe_intermediate_size x n_shared_experts, the first first_k_dense_replace layers dense.
- DeepSeek-V3: sigmoid scores; the choice adds e_score_correction_bias, groups ranked by the sum of their best two;
  norm_topk_prob; routed_scaling_factor; shared experts; first_k_dense_replace dense layers.

DeepSeek's attention goes onto the core's MLA (kv_lora_rank -> kv_latent_dim, qk_rope_head_dim -> rope_head_dim,
qk_nope_head_dim -> head_dim; kv_b_proj splits into k_up / v_up; interleaved RoPE rows are permuted at import).
What the core's MLA lacks is refused by name (DEEPSEEK_REFUSALS).
"""

from __future__ import annotations

import math
from typing import Any

from omnicoder.errors import OmniCoderError

# family -> (experts field, expert width field)
EXPERT_FIELDS = {
    "qwen2_moe": ("num_experts", "moe_intermediate_size"),
    "qwen3_moe": ("num_experts", "moe_intermediate_size"),
    "olmoe": ("num_experts", "intermediate_size"),
    "mixtral": ("num_local_experts", "intermediate_size"),
    "granitemoe": ("num_local_experts", "intermediate_size"),
    "deepseek_v2": ("n_routed_experts", "moe_intermediate_size"),
    "deepseek_v3": ("n_routed_experts", "moe_intermediate_size"),
}
DEEPSEEK = ("deepseek_v2", "deepseek_v3")
DEEPSEEK_NORM_EPS = 1e-6  # transformers' kv_a_layernorm ignores rms_norm_eps and uses this
V2_TOPK_METHODS = ("greedy", "group_limited_greedy")
DEEPSEEK_ROPE_KEYS = ("qk_rope_head_dim", "rope_interleave")  # read here, not by omnicoder.hf_rope


def _int(hf: dict[str, Any], key: str, default: int = 0) -> int:
    value = hf.get(key)
    return default if value is None else int(value)


def _required(hf: dict[str, Any], family: str, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if hf.get(key) is None]
    if missing:
        raise OmniCoderError(
            f"mixture-of-experts config.json ({family}) lacks {', '.join(missing)}; fix config.json or re-save it"
        )


def _dense_layers(hf: dict[str, Any], family: str, n_layers: int) -> list[int]:
    if family in ("qwen2_moe", "qwen3_moe"):
        only = hf.get("mlp_only_layers") or []
        step = _int(hf, "decoder_sparse_step", 1)
        if step <= 0:
            raise OmniCoderError(f"config.json decoder_sparse_step must be > 0, got {step}; fix config.json")
        return [i for i in range(n_layers) if i in only or (i + 1) % step != 0]
    if family in DEEPSEEK:
        return list(range(min(_int(hf, "first_k_dense_replace"), n_layers)))
    return []


def _routing(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """moe_gating, norm, scale, bias and groups of a family."""
    norm = bool(hf.get("norm_topk_prob", False))
    if family == "mixtral":
        return {"moe_gating": "softmax", "moe_norm_topk": True}
    if family == "granitemoe":
        return {"moe_gating": "topk_softmax"}
    if family not in DEEPSEEK:
        return {"moe_gating": "softmax", "moe_norm_topk": norm}
    fields: dict[str, Any] = {"moe_routed_scale": float(hf.get("routed_scaling_factor") or 1.0)}
    groups = (_int(hf, "n_group", 1), _int(hf, "topk_group", 1))
    if family == "deepseek_v2":
        method = hf.get("topk_method") or "greedy"
        if method not in V2_TOPK_METHODS:
            raise OmniCoderError(
                f"DeepSeek-V2 topk_method {method!r} is not supported by hf: import; use {' or '.join(V2_TOPK_METHODS)}"
            )
        fields["moe_gating"] = "softmax"
        if method == "greedy":
            groups = (0, 0)
    else:
        fields.update(moe_gating="sigmoid", moe_norm_topk=norm, moe_score_bias=True)
    if groups[0] > 1:  # one group (or none) leaves every expert eligible
        fields.update(moe_n_group=groups[0], moe_topk_group=groups[1])
    return fields


def _shared(hf: dict[str, Any], family: str, width: int) -> dict[str, Any]:
    if family == "qwen2_moe":
        shared = _int(hf, "shared_expert_intermediate_size")
        if shared <= 0:
            raise OmniCoderError(
                "Qwen2-MoE config.json shared_expert_intermediate_size must be > 0 (the shared expert and its gate)"
            )
        return {"moe_shared_hidden": shared, "moe_shared_gate": True}
    if family in DEEPSEEK:
        return {"moe_shared_hidden": width * _int(hf, "n_shared_experts")}
    return {}


def moe_fields(hf: dict[str, Any], family: str, n_layers: int) -> dict[str, Any]:
    """The core's moe_* fields for an HF config of MoE family `family`, or a one-line error."""
    experts_key, width_key = EXPERT_FIELDS[family]
    _required(hf, family, (experts_key, "num_experts_per_tok", width_key))
    experts, top_k, width = _int(hf, experts_key), _int(hf, "num_experts_per_tok"), _int(hf, width_key)
    if experts <= 0:
        raise OmniCoderError(f"config.json {experts_key} is {experts}; hf: import needs routed experts (> 0)")
    if family == "olmoe" and hf.get("clip_qkv") is not None:
        raise OmniCoderError("OLMoE clip_qkv (clamping q, k and v) is not supported by hf: import; the core has none")
    if family == "qwen2_moe" and hf.get("use_sliding_window"):
        raise OmniCoderError(
            "Qwen2-MoE use_sliding_window is not supported by hf: import (transformers' eager and flash paths disagree)"
        )
    return {
        "moe_experts": experts,
        "moe_top_k": top_k,
        "moe_hidden": width,
        "moe_dense_layers": _dense_layers(hf, family, n_layers),
        "moe_aux_loss_coef": float(hf.get("router_aux_loss_coef") or hf.get("aux_loss_alpha") or 0.01),
        **_routing(hf, family),
        **_shared(hf, family, width),
    }


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def deepseek_attention(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """DeepSeek's MLA as the core's: attention "mla" fields, or a one-line error naming what the core lacks."""
    _required(hf, family, ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"))
    if hf.get("q_lora_rank") is not None:
        raise OmniCoderError(
            f"{family} q_lora_rank={hf['q_lora_rank']} is not supported by hf: import: it needs a low-rank query "
            "(q_a_proj, the q_a_layernorm RMSNorm, q_b_proj); the core's MLA has one q_proj (q_lora_rank null)"
        )
    nope, value = int(hf["qk_nope_head_dim"]), int(hf["v_head_dim"])
    if nope != value:
        raise OmniCoderError(
            f"{family} v_head_dim {value} != qk_nope_head_dim {nope} is not supported by hf: import: "
            "the core's MLA has one head_dim for keys' non-RoPE part and values"
        )
    eps = float(hf.get("rms_norm_eps") or DEEPSEEK_NORM_EPS)
    if eps != DEEPSEEK_NORM_EPS:
        raise OmniCoderError(
            f"{family} rms_norm_eps {eps} is not supported by hf: import: transformers' kv_a_layernorm uses 1e-6 "
            "whatever rms_norm_eps says, the core's latent norm uses rms_norm_eps"
        )
    rope = int(hf["qk_rope_head_dim"])
    fields: dict[str, Any] = {
        "attention": "mla",
        "head_dim": nope,
        "kv_latent_dim": int(hf["kv_lora_rank"]),
        "rope_head_dim": rope,
    }
    scaling = hf.get("rope_scaling") or {}
    if family == "deepseek_v3" and scaling.get("mscale_all_dim"):  # DeepseekV3Attention.scaling
        mscale = _yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"]))
        fields["attention_scale"] = (nope + rope) ** -0.5 * mscale * mscale
    return fields


def without_mla_rope_keys(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """The config without DeepSeek's MLA RoPE keys (read here), for omnicoder.hf_rope's layout check."""
    if family not in DEEPSEEK:
        return hf
    return {key: value for key, value in hf.items() if key not in DEEPSEEK_ROPE_KEYS}


def rope_interleaved(hf: dict[str, Any], family: str) -> bool:
    """Whether the checkpoint's RoPE rotates adjacent pairs (DeepSeek-V2 always, V3 by rope_interleave)."""
    return family == "deepseek_v2" or (family == "deepseek_v3" and bool(hf.get("rope_interleave", True)))
