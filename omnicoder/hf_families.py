"""Hugging Face tensor names -> the model core's, per family (float32).

- Phi-3's fused `qkv_proj` and `gate_up_proj` are split.
- Norm names follow the config's norm_placement: "pre" (Llama: input / post-attention norms before attention
  and MLP), "sandwich" (Gemma 2/3: input, post-attention, pre-feedforward, post-feedforward) and "post"
  (OLMo 2: post-attention and post-feedforward norms on the sublayer outputs).
- Gemma's RMSNorm computes x * (1 + w): its weights are folded here (w + 1), so the core keeps one RMSNorm.
- Mixture-of-experts layers (`moe_tensors`): per-expert gate/up/down (Qwen-MoE, OLMoE, DeepSeek: gate_proj /
  up_proj / down_proj; Mixtral: w1 / w3 / w2) are stacked into the core's ExpertBank [E, H, d] / [E, d, H];
  Granite-MoE's merged input_linear [E, 2H, d] is split into gate and up, output_linear is down_proj. Routers
  (gate, router.layer) become mlp.router.weight, DeepSeek-V3's e_score_correction_bias mlp.router.score_bias,
  shared experts mlp.shared (Qwen2-MoE's shared_expert_gate: mlp.shared_gate).
- DeepSeek MLA: kv_a_proj_with_mqa -> kv_down, kv_a_layernorm -> kv_norm, kv_b_proj [H * (nope + v), latent] ->
  k_up / v_up [H, head_dim, latent]; with interleaved RoPE the rotated rows of q_proj and kv_down are permuted
  (even then odd) so that the core's rotate-half RoPE computes the same scores.
"""

from __future__ import annotations

import re

import torch

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
NORMS = {
    "pre": {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
    },
    "sandwich": {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "attn_post_norm.weight",
        "pre_feedforward_layernorm.weight": "mlp_norm.weight",
        "post_feedforward_layernorm.weight": "mlp_post_norm.weight",
    },
    "post": {
        "post_attention_layernorm.weight": "attn_post_norm.weight",
        "post_feedforward_layernorm.weight": "mlp_post_norm.weight",
    },
}
QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_EXPERT = re.compile(r"^(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
EXPERT_PROJ = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj", "w1": "gate_proj"}
EXPERT_PROJ.update(w3="up_proj", w2="down_proj")
MOE_RENAMES = {
    "mlp.gate.weight": "mlp.router.weight",
    "block_sparse_moe.gate.weight": "mlp.router.weight",
    "block_sparse_moe.router.layer.weight": "mlp.router.weight",
    "mlp.gate.e_score_correction_bias": "mlp.router.score_bias",
    "mlp.shared_expert_gate.weight": "mlp.shared_gate.weight",
    "block_sparse_moe.output_linear.weight": "mlp.experts.down_proj",
    "self_attn.kv_a_proj_with_mqa.weight": "self_attn.kv_down.weight",
    "self_attn.kv_a_layernorm.weight": "self_attn.kv_norm.weight",
}


def _split_fused(rest: str, tensor: torch.Tensor, c: OmniCoderConfig, prefix: str) -> dict[str, torch.Tensor]:
    if rest == "self_attn.qkv_proj.weight":
        sizes = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim)
        if tensor.shape[0] != sum(sizes):
            raise OmniCoderError(
                f"{prefix}self_attn.qkv_proj.weight has {tensor.shape[0]} rows, config.json implies {sum(sizes)}"
            )
        parts = tensor.split(sizes, dim=0)
        return {f"{prefix}attn.{p}_proj.weight": t.contiguous() for p, t in zip("qkv", parts, strict=True)}
    gate, up = tensor.chunk(2, dim=0)  # mlp.gate_up_proj.weight
    return {prefix + "mlp.gate_proj.weight": gate.contiguous(), prefix + "mlp.up_proj.weight": up.contiguous()}


def _layer_tensor(
    rest: str, tensor: torch.Tensor, c: OmniCoderConfig, prefix: str, fold: bool, hf_name: str
) -> dict[str, torch.Tensor]:
    norms = NORMS[c.norm_placement]
    if rest in norms:
        return {prefix + norms[rest]: tensor + 1.0 if fold else tensor}
    if rest in ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"):
        return _split_fused(rest, tensor, c, prefix)
    if rest in QK_NORMS:
        return {prefix + "attn." + rest.removeprefix("self_attn."): tensor + 1.0 if fold else tensor}
    if rest.startswith("self_attn."):
        return {prefix + "attn." + rest.removeprefix("self_attn."): tensor}
    if rest.startswith("mlp."):
        return {prefix + rest: tensor}
    raise OmniCoderError(f"checkpoint tensor {hf_name} has no counterpart in the model core ({c.norm_placement} norms)")


def _interleave_order(width: int) -> torch.Tensor:
    """Rows of an adjacent-pairs RoPE vector in rotate-half order: even rows, then odd rows."""
    return torch.cat((torch.arange(0, width, 2), torch.arange(1, width, 2)))


def _mla_tensor(rest: str, tensor: torch.Tensor, c: OmniCoderConfig, interleaved: bool) -> dict[str, torch.Tensor]:
    """DeepSeek MLA tensors of one layer under the names _layer_tensor maps (self_attn.* -> attn.*)."""
    order = _interleave_order(c.rope_head_dim)
    if rest == "self_attn.kv_b_proj.weight":
        per_head = tensor.view(c.n_heads, 2 * c.head_dim, c.kv_latent_dim)
        return {
            "self_attn.k_up": per_head[:, : c.head_dim].clone(),
            "self_attn.v_up": per_head[:, c.head_dim :].clone(),
        }
    if rest == "self_attn.kv_a_proj_with_mqa.weight" and interleaved:
        latent, rope = tensor.split((c.kv_latent_dim, c.rope_head_dim))
        tensor = torch.cat((latent, rope[order]))
    elif rest == "self_attn.q_proj.weight" and interleaved:
        heads = tensor.view(c.n_heads, c.head_dim + c.rope_head_dim, -1)
        tensor = torch.cat((heads[:, : c.head_dim], heads[:, c.head_dim :][:, order]), dim=1).reshape(tensor.shape)
    return {MOE_RENAMES.get(rest, rest): tensor}


def moe_tensors(
    tensors: dict[str, torch.Tensor], config: OmniCoderConfig, rope_interleaved: bool = False
) -> dict[str, torch.Tensor]:
    """HF MoE (and DeepSeek MLA) tensors -> the names convert_state maps onto the core; others pass unchanged."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for hf_name, tensor in tensors.items():
        match = _LAYER.match(hf_name.removeprefix("model."))
        if match is None:
            out[hf_name] = tensor
            continue
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if expert := _EXPERT.match(rest):
            experts.setdefault((prefix, EXPERT_PROJ[expert.group(2)]), {})[int(expert.group(1))] = tensor
        elif rest == "block_sparse_moe.input_linear.weight":  # Granite-MoE: [E, 2H, d], gate half first
            gate, up = tensor.chunk(2, dim=1)
            out[prefix + "mlp.experts.gate_proj"], out[prefix + "mlp.experts.up_proj"] = gate, up
        elif rest.startswith(("mlp.shared_expert.", "mlp.shared_experts.")):
            out[prefix + "mlp.shared." + rest.split(".", 2)[2]] = tensor
        elif config.attention == "mla" and rest.startswith("self_attn."):
            out.update({prefix + k: v for k, v in _mla_tensor(rest, tensor, config, rope_interleaved).items()})
        else:
            out[prefix + MOE_RENAMES.get(rest, rest)] = tensor
    for (prefix, proj), by_index in experts.items():
        if sorted(by_index) != list(range(config.moe_experts)):
            raise OmniCoderError(
                f"checkpoint {prefix}experts has {proj} for {len(by_index)} experts, config.json implies "
                f"{config.moe_experts} (0..{config.moe_experts - 1})"
            )
        out[prefix + "mlp.experts." + proj] = torch.stack([by_index[e] for e in range(config.moe_experts)])
    return out


def convert_state(
    tensors: dict[str, torch.Tensor], config: OmniCoderConfig, fold_norms: bool = False, rope_interleaved: bool = False
) -> dict[str, torch.Tensor]:
    """HF tensor names -> ours (float32). fold_norms: Gemma's (1 + w) RMSNorm weights become w + 1.
    rope_interleaved: the checkpoint's MLA RoPE rotates adjacent pairs (DeepSeek)."""
    if config.moe_experts or config.attention == "mla":
        tensors = moe_tensors(tensors, config, rope_interleaved)
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in tensors.items():
        name = hf_name.removeprefix("model.")
        tensor = tensor.float()
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "embed_tokens.weight":
            out["embed.weight"] = tensor
        elif name == "norm.weight":
            out[name] = tensor + 1.0 if fold_norms else tensor
        elif name == "lm_head.weight":
            out[name] = tensor
        elif match := _LAYER.match(name):
            layer, rest = match.groups()
            out.update(_layer_tensor(rest, tensor, config, f"layers.{layer}.", fold_norms, hf_name))
        else:
            raise OmniCoderError(f"checkpoint tensor {hf_name} has no counterpart in the model core")
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out
