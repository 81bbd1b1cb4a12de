"""Hugging Face tensor names -> the model core's, per family (float32).

- Phi-3's fused `qkv_proj` and `gate_up_proj` are split.
- Norm names follow the config's norm_placement: "pre" (Llama: input / post-attention norms before attention
  and MLP), "sandwich" (Gemma 2/3: input, post-attention, pre-feedforward, post-feedforward) and "post"
  (OLMo 2: post-attention and post-feedforward norms on the sublayer outputs).
- Gemma's RMSNorm computes x * (1 + w): its weights are folded here (w + 1), so the core keeps one RMSNorm.
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


def convert_state(
    tensors: dict[str, torch.Tensor], config: OmniCoderConfig, fold_norms: bool = False
) -> dict[str, torch.Tensor]:
    """HF tensor names -> ours (float32). fold_norms: Gemma's (1 + w) RMSNorm weights become w + 1."""
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
