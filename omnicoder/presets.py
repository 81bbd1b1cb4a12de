"""Named model configs: the shipped default model and tiny shapes for tests. Torch-free."""

from __future__ import annotations

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError


def omnicoder_tiny() -> OmniCoderConfig:
    """The embedded default: ~2M parameters, MLA attention, 2 MTP heads, a retention head, byte vocab."""
    return OmniCoderConfig(
        name="omnicoder-tiny",
        d_model=192,
        n_layers=4,
        n_heads=6,
        n_kv_heads=6,
        head_dim=32,
        mlp_hidden=512,
        attention="mla",
        kv_latent_dim=96,
        rope_head_dim=16,
        max_seq_len=512,
        n_mtp=2,
        retention_head=True,
    )


def gqa_test_config() -> OmniCoderConfig:
    return OmniCoderConfig(
        name="test-gqa",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_hidden=128,
        max_seq_len=128,
        n_mtp=2,
        retention_head=True,
    )


def mla_test_config() -> OmniCoderConfig:
    return OmniCoderConfig(
        name="test-mla",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=16,
        mlp_hidden=128,
        attention="mla",
        kv_latent_dim=32,
        rope_head_dim=8,
        max_seq_len=128,
        n_mtp=2,
        retention_head=True,
    )


def random_100m() -> OmniCoderConfig:
    """A ~100M-parameter GQA shape for speed benchmarks (random weights, never trained)."""
    return OmniCoderConfig(
        name="random-100m",
        d_model=768,
        n_layers=16,
        n_heads=12,
        n_kv_heads=4,
        head_dim=64,
        mlp_hidden=2048,
        max_seq_len=2048,
    )


def moe_test_config() -> OmniCoderConfig:
    """A tiny MLA + MoE shape for tests: 8 fine-grained experts (top-2) with a gated shared expert, layer 0 dense."""
    return OmniCoderConfig(
        name="test-moe",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=16,
        mlp_hidden=128,
        attention="mla",
        kv_latent_dim=32,
        rope_head_dim=8,
        max_seq_len=128,
        moe_experts=8,
        moe_top_k=2,
        moe_hidden=32,
        moe_norm_topk=True,
        moe_shared_hidden=32,
        moe_shared_gate=True,
        moe_dense_layers=[0],
    )


def random_moe_100m() -> OmniCoderConfig:
    """OmniCoder's own architecture at ~100M total / ~25M active parameters: MLA attention, DeepSeek-style
    fine-grained experts (32 routed, top-4, sigmoid gating with a bias for the choice, normalised, one shared
    expert), the first layer dense. For MoE speed and expert-paging benchmarks (random weights, never trained)."""
    return OmniCoderConfig(
        name="random-moe-100m",
        d_model=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=8,
        head_dim=64,
        mlp_hidden=1536,
        attention="mla",
        kv_latent_dim=128,
        rope_head_dim=32,
        max_seq_len=2048,
        moe_experts=32,
        moe_top_k=4,
        moe_hidden=256,
        moe_gating="sigmoid",
        moe_norm_topk=True,
        moe_score_bias=True,
        moe_shared_hidden=384,
        moe_dense_layers=[0],
    )


PRESETS = {
    "omnicoder-tiny": omnicoder_tiny,
    "test-gqa": gqa_test_config,
    "test-mla": mla_test_config,
    "random-100m": random_100m,
    "test-moe": moe_test_config,
    "random-moe-100m": random_moe_100m,
}


def preset(name: str) -> OmniCoderConfig:
    if name not in PRESETS:
        raise OmniCoderError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]().validate()
