"""A tiny config that mixes every per-layer and family feature of issue #20, and weights that make them matter."""

from __future__ import annotations

import torch

from omnicoder.config import OmniCoderConfig, RopeScaling

ORIGINAL_CONTEXT = 12  # longrope's switch: positions >= 12 use long_factor
WINDOW = 4


def family_config(**changes) -> OmniCoderConfig:
    """4 layers: sliding (local RoPE base), full (longrope, partial rotary), sliding, full NoPE; soft-caps, sandwich
    norms, qk-norm, GELU-tanh MLP, Granite-style multipliers, an explicit attention scale."""
    fields = dict(
        name="test-family",
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_hidden=96,
        max_seq_len=64,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_theta=1e6,
        rope_local_theta=1e4,
        nope_layers=[3],
        rotary_dim=8,
        rope_scaling=RopeScaling(
            "longrope",
            original_max_position_embeddings=ORIGINAL_CONTEXT,
            short_factor=[1.0, 1.3, 1.7, 2.0],
            long_factor=[1.5, 3.0, 6.0, 12.0],
        ),
        attention_scale=0.3,
        attn_logit_softcap=4.0,
        final_logit_softcap=3.0,
        norm_placement="sandwich",
        qk_norm=True,
        mlp_activation="gelu_tanh",
        embedding_multiplier=8.0,
        residual_multiplier=0.6,
        logit_multiplier=0.5,
    )
    fields.update(changes)
    return OmniCoderConfig(**fields).validate()


@torch.no_grad()
def spread_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Re-draw linear and embedding weights wider than the training init, so attention scores and logits reach the
    soft-caps (with std 0.02 every tanh is in its linear range) and the norms' weights differ from 1."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
        elif param.dim() == 2:
            param.copy_(std * torch.randn(param.shape, generator=generator))
    return model
