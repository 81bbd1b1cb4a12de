"""Mixture-of-experts families through `--model hf:DIR` (issue #21): Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE,
Mixtral, DeepSeek-V2 and DeepSeek-V3 (MLA + MoE). Tiny random-weight models are built here with transformers 4.57
(save_pretrained into tmp dirs, a tokenizer trained here); the importer's logits must equal transformers' own
(fp32, <= 1e-4). What the core cannot compute (DeepSeek's low-rank query, ...) is refused by name."""

from __future__ import annotations

import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.hf_config import config_from_hf
from omnicoder.loading import load_model_and_tokenizer
from omnicoder.moe import moe_layers, set_moe_form

from .test_hf_import import COMMON, VOCAB, train_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")
pytest.importorskip("tokenizers", reason="tokenizers is not installed")

EXPERTS = dict(num_experts_per_tok=2)
DEEPSEEK = dict(
    num_key_value_heads=4,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=16,
    n_routed_experts=8,
    n_shared_experts=1,
    moe_intermediate_size=32,
    n_group=4,
    topk_group=2,
    **EXPERTS,
)
FAMILIES = {
    # Qwen2-MoE: gated shared expert, layer 1 dense through mlp_only_layers
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_hidden_layers=3,
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[1],
            **EXPERTS,
        ),
    ),
    # Qwen3-MoE: qk-norm, normalised top-k, decoder_sparse_step 2 (layer 0 dense)
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            head_dim=32,
            num_experts=8,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            **EXPERTS,
        ),
    ),
    # OLMoE: q/k RMSNorm over the projections, experts of intermediate_size, un-normalised top-k
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, intermediate_size=32, **EXPERTS)),
    # Granite-MoE: top-k logits then softmax, merged expert weights, Granite's multipliers
    "granitemoe": (
        "GraniteMoeConfig",
        "GraniteMoeForCausalLM",
        dict(
            num_local_experts=8,
            intermediate_size=32,
            embedding_multiplier=6.0,
            residual_multiplier=0.3,
            attention_multiplier=0.09,
            logits_scaling=4.0,
            **EXPERTS,
        ),
    ),
    # Mixtral: w1/w3/w2 experts, renormalised top-2, sliding window over every layer
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(num_local_experts=8, intermediate_size=32, sliding_window=8, **EXPERTS),
    ),
    # DeepSeek-V2 (V2-Lite's shape: no q_lora): MLA + softmax group-limited greedy routing, routed scale, shared expert
    "deepseek_v2": (
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        # topk_group 1 < top-k 2: both experts from the best group (with topk_group >= top-k the limit is a no-op)
        dict(**{**DEEPSEEK, "topk_group": 1}, topk_method="group_limited_greedy", routed_scaling_factor=2.0),
    ),
    # DeepSeek-V3 (without q_lora): MLA with interleaved RoPE + sigmoid routing with the choice bias and groups
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(norm_topk_prob=True, routed_scaling_factor=2.5, rope_interleave=True, **DEEPSEEK),
    ),
}


def make_moe_model(family: str, out, seed: int = 0, **overrides):
    """A random-weight HF MoE model of `family` (eager attention), saved with a tokenizer into `out`."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides}, attn_implementation="eager")
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms start at 1 and the V3 bias at 0: randomize them so their mapping is tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.uniform_(-0.05, 0.05)
    model.save_pretrained(out)
    train_tokenizer().save_pretrained(out)
    return model


@pytest.fixture(scope="module")
def moe_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-moe")


def _hf_config(family: str, **overrides) -> dict:
    config_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    return {**config.to_dict(), "architectures": [model_cls]}


def _parity(hf_model, directory, seq: int = 24, batch: int = 2, form: str = "auto") -> float:
    ours, _ = load_model_and_tokenizer(f"hf:{directory}")
    set_moe_form(ours, form)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids, torch.arange(seq).expand(batch, seq)).logits
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, moe_root):
    directory = moe_root / family
    hf_model = make_moe_model(family, directory)
    assert _parity(hf_model, directory) <= 1e-4


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_gather_and_dense_forms_match_transformers(family, moe_root):
    directory = moe_root / f"forms-{family}"
    hf_model = make_moe_model(family, directory, seed=2)
    for form in ("gather", "dense"):
        assert _parity(hf_model, directory, seq=12, form=form) <= 1e-4


def test_deepseek_v3_yarn_and_rotate_half_rope(moe_root):
    """rope_interleave false, yarn with mscale_all_dim (the softmax scale times mscale^2), n_group 1."""
    directory = moe_root / "deepseek_v3-yarn"
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale_all_dim": 1.0}
    hf_model = make_moe_model(
        "deepseek_v3", directory, seed=3, rope_interleave=False, rope_scaling=rope, n_group=1, topk_group=1
    )
    assert _parity(hf_model, directory, seq=40) <= 1e-4


def test_deepseek_v2_greedy_routing(moe_root):
    directory = moe_root / "deepseek_v2-greedy"
    hf_model = make_moe_model("deepseek_v2", directory, seed=4, topk_method="greedy", n_group=None, topk_group=None)
    assert _parity(hf_model, directory) <= 1e-4


def test_configs():
    q2 = config_from_hf(_hf_config("qwen2_moe"))
    assert (q2.moe_experts, q2.moe_top_k, q2.moe_hidden, q2.moe_gating) == (8, 2, 32, "softmax")
    assert (q2.moe_shared_hidden, q2.moe_shared_gate, q2.moe_dense_layers) == (48, True, [1])
    assert q2.attention_bias and not q2.moe_norm_topk
    q3 = config_from_hf(_hf_config("qwen3_moe"))
    assert q3.moe_dense_layers == [0] and q3.moe_norm_topk and q3.qk_norm and q3.moe_shared_hidden == 0
    assert config_from_hf(_hf_config("olmoe")).qk_norm_scope == "projection"
    granite = config_from_hf(_hf_config("granitemoe"))
    assert granite.moe_gating == "topk_softmax" and granite.residual_multiplier == 0.3
    mixtral = config_from_hf(_hf_config("mixtral"))
    assert mixtral.moe_norm_topk and mixtral.sliding_window == 8
    v2 = config_from_hf(_hf_config("deepseek_v2"))
    assert (v2.attention, v2.head_dim, v2.kv_latent_dim, v2.rope_head_dim) == ("mla", 16, 32, 8)
    assert (v2.moe_gating, v2.moe_norm_topk, v2.moe_n_group, v2.moe_topk_group) == ("softmax", False, 4, 1)
    assert (v2.moe_routed_scale, v2.moe_shared_hidden, v2.moe_dense_layers) == (2.0, 32, [0])
    v3 = config_from_hf(_hf_config("deepseek_v3"))
    assert (v3.moe_gating, v3.moe_score_bias, v3.moe_norm_topk, v3.moe_routed_scale) == ("sigmoid", True, True, 2.5)


def test_imported_model_has_moe_layers(moe_root):
    directory = moe_root / "layers-qwen2_moe"
    make_moe_model("qwen2_moe", directory, seed=5)
    model, _ = load_model_and_tokenizer(f"hf:{directory}")
    assert [type(layer.mlp).__name__ for layer in model.layers] == ["MoEFeedForward", "GatedMLP", "MoEFeedForward"]
    assert moe_layers(model)[0].experts.gate_proj.shape == (8, 32, 64)


@pytest.mark.parametrize(
    "family, overrides, message",
    [
        (
            "deepseek_v3",
            {"q_lora_rank": 16},
            "q_lora_rank=16 is not supported by hf: import: it needs a low-rank query",
        ),
        ("deepseek_v2", {"v_head_dim": 8}, "v_head_dim 8 != qk_nope_head_dim 16"),
        ("deepseek_v3", {"rms_norm_eps": 1e-5}, "kv_a_layernorm uses 1e-6"),
        ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc'"),
        ("olmoe", {"clip_qkv": 8.0}, "OLMoE clip_qkv"),
        ("qwen2_moe", {"use_sliding_window": True}, "Qwen2-MoE use_sliding_window"),
        ("qwen2_moe", {"shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size must be > 0"),
        ("mixtral", {"num_local_experts": 0}, "num_local_experts is 0"),
    ],
)
def test_refusals_name_the_missing_feature(family, overrides, message):
    with pytest.raises(OmniCoderError, match=message):
        config_from_hf(_hf_config(family, **overrides))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architectures": ["GraniteMoeSharedForCausalLM"]}, "Granite-MoE's shared MLP"),
        ({"architectures": ["PhimoeForCausalLM"]}, "sparsemixer routing"),
        ({"architectures": ["LlamaForCausalLM"], "num_experts": 8}, "mixture-of-experts fields in a llama"),
        ({"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8}, "lacks num_experts_per_tok"),
    ],
)
def test_refused_architectures_and_fields(fields, message):
    with pytest.raises(OmniCoderError, match=message):
        config_from_hf({**COMMON, "model_type": "x", **fields})


def test_missing_expert_tensor_is_named(moe_root):
    from safetensors.torch import load_file, save_file

    directory = moe_root / "missing-expert"
    make_moe_model("qwen3_moe", directory, seed=6)
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(OmniCoderError, match="has up_proj for 7 experts, config.json implies 8"):
        load_model_and_tokenizer(f"hf:{directory}")
