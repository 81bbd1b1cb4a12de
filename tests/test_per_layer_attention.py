"""Per-layer attention and the family features of issue #20 in the eager model core."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnicoder import ops
from omnicoder.config import OmniCoderConfig, RopeScaling
from omnicoder.kv_slot import AttentionSpec
from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config, mla_test_config
from omnicoder.rope import apply_rope, make_rotary
from omnicoder.torch_kv_cache import TorchKVCache
from tests.family_support import ORIGINAL_CONTEXT, family_config, spread_weights

# longrope switches factors once a call reaches position ORIGINAL_CONTEXT (as transformers does), so a cache
# filled before the switch is not what a full pass computes after it: these tests stay within the original context
LENGTH = ORIGINAL_CONTEXT


def stepped_logits(model: OmniCoder, ids: torch.Tensor, chunks) -> torch.Tensor:
    cache, outs = TorchKVCache(model.config.n_layers), []
    for start, end in chunks:
        pos = torch.arange(start, end).expand(ids.shape[0], -1)
        out = model(ids[:, start:end], pos, cache.past())
        cache.append(out.new_kv)
        outs.append(out.logits)
    return torch.cat(outs, dim=1)


def _gqa(**changes) -> OmniCoderConfig:
    return OmniCoderConfig(**{**gqa_test_config().to_dict(), **changes}).validate()


FEATURES = {
    "layer_types": _gqa(sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
    "local_rope": _gqa(sliding_window=3, layer_types=["sliding_attention", "full_attention"], rope_local_theta=100.0),
    "nope": _gqa(nope_layers=[1]),
    "rotary_dim": _gqa(rotary_dim=6),
    "longrope": _gqa(
        rotary_dim=8,
        rope_scaling=RopeScaling(
            "longrope", original_max_position_embeddings=32, short_factor=[1.0, 2.0, 3.0, 4.0], long_factor=[5.0] * 4
        ),
    ),
    "attention_scale": _gqa(attention_scale=0.5),
    "attn_softcap": _gqa(attn_logit_softcap=2.0),
    "attn_softcap_window": _gqa(attn_logit_softcap=2.0, sliding_window=3),
    "final_softcap": _gqa(final_logit_softcap=1.5),
    "sandwich": _gqa(norm_placement="sandwich"),
    "post": _gqa(norm_placement="post"),
    "qk_projection": _gqa(qk_norm=True, qk_norm_scope="projection"),
    "gelu_tanh": _gqa(mlp_activation="gelu_tanh"),
    "multipliers": _gqa(embedding_multiplier=8.0, residual_multiplier=0.25, logit_multiplier=0.1),
    "mixed": family_config(),
    "mla_per_layer": OmniCoderConfig(
        **{
            **mla_test_config().to_dict(),
            "sliding_window": 3,
            "layer_types": ["full_attention", "sliding_attention"],
            "rope_local_theta": 50.0,
            "nope_layers": [0],
            "attention_scale": 0.2,
            "norm_placement": "sandwich",
            "final_logit_softcap": 2.0,
        }
    ).validate(),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
@torch.no_grad()
def test_decode_step_by_step_equals_full_forward(feature):
    model = spread_weights(OmniCoder(FEATURES[feature]).eval())
    ids = torch.randint(0, 256, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    full = model(ids, torch.arange(LENGTH).expand(2, -1)).logits
    stepped = stepped_logits(model, ids, [(0, 5)] + [(i, i + 1) for i in range(5, LENGTH)])
    assert (stepped - full).abs().max().item() <= 1e-4
    plain = spread_weights(OmniCoder(gqa_test_config()).eval())
    if feature != "mla_per_layer":  # the feature changes the output (it is not silently ignored)
        assert (full - plain(ids, torch.arange(LENGTH).expand(2, -1)).logits).abs().max().item() > 1e-3


@torch.no_grad()
def test_features_change_what_they_should():
    """Each setting acts where it is documented: windows per layer, soft-caps bound scores and logits."""
    model = spread_weights(OmniCoder(family_config()).eval())
    specs = [layer.attn.spec for layer in model.layers]
    assert specs == [AttentionSpec(0.3, 4, 4.0), AttentionSpec(0.3, 0, 4.0)] * 2
    logits = model(torch.randint(0, 256, (1, 8)), torch.arange(8)[None]).logits
    assert logits.abs().max().item() < 3.0  # final_logit_softcap
    assert {"attn_post_norm", "mlp_post_norm"} <= dict(model.layers[0].named_children()).keys()
    post = OmniCoder(_gqa(norm_placement="post"))
    assert post.layers[0].attn_norm is None and post.layers[0].mlp_norm is None
    assert post.layers[0].attn_post_norm is not None


def test_default_model_keeps_its_tensors():
    """The byte model's state dict (names and shapes) is what it was before the per-layer settings."""
    names = set(OmniCoder(OmniCoderConfig(n_layers=1)).state_dict())
    assert names == {
        "embed.weight",
        "lm_head.weight",
        "norm.weight",
        *(
            f"layers.0.{n}.weight"
            for n in (
                "attn_norm",
                "mlp_norm",
                "attn.q_proj",
                "attn.k_proj",
                "attn.v_proj",
                "attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            )
        ),
    }


@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("window", [0, 3])
def test_softcapped_attention_matches_a_written_out_reference(hkv, window):
    torch.manual_seed(4)
    q, k, v = 3 * torch.randn(2, 4, 5, 8), 3 * torch.randn(2, hkv, 9, 8), torch.randn(2, hkv, 9, 8)
    got = ops.attention(q, k, v, AttentionSpec(0.5, window, 2.0))
    keys, values = k.repeat_interleave(4 // hkv, 1), v.repeat_interleave(4 // hkv, 1)
    scores = 2.0 * torch.tanh(q @ keys.transpose(-1, -2) * 0.5 / 2.0)
    allowed = ops.newest_mask(5, 9, window)
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
    assert (got - want).abs().max().item() <= 1e-5
    uncapped = ops.attention(q, k, v, AttentionSpec(0.5, window))
    assert (uncapped - want).abs().max().item() > 1e-2


def test_partial_rotary_rotates_the_first_dims_rotate_half():
    """transformers' partial rotary (Phi-3 / Phi-4-mini): rotate-half within the first rotary_dim dims."""
    torch.manual_seed(5)
    x = torch.randn(1, 2, 3, 10)
    rotary = make_rotary(6, 10000.0, RopeScaling(), 64)
    cos, sin = rotary(torch.arange(3)[None])
    got = apply_rope(x, cos, sin)
    rot, rest = x[..., :6], x[..., 6:]
    half = torch.cat((-rot[..., 3:], rot[..., :3]), dim=-1)
    want = torch.cat((rot * cos[:, None] + half * sin[:, None], rest), dim=-1)
    assert torch.allclose(got, want, atol=1e-6) and torch.equal(got[..., 6:], rest)


def test_longrope_picks_factors_by_the_calls_largest_position():
    short, long = [1.0, 2.0, 4.0, 8.0], [3.0, 5.0, 7.0, 9.0]
    scaling = RopeScaling("longrope", original_max_position_embeddings=16, short_factor=short, long_factor=long)
    rotary = make_rotary(8, 10000.0, scaling, 64)
    base = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    factor = math.sqrt(1 + math.log(64 / 16) / math.log(16))  # transformers' derived attention factor
    for last, factors in ((15, short), (16, long)):
        positions = torch.tensor([[0, last]])
        cos, _ = rotary(positions)
        angle = last * base / torch.tensor(factors, dtype=torch.float64)
        assert torch.allclose(cos[0, 1, :4].double(), torch.cos(angle) * factor, atol=1e-5)
    explicit = RopeScaling("longrope", original_max_position_embeddings=16, short_factor=short, long_factor=long,
                           attention_factor=1.25)  # fmt: skip
    assert make_rotary(8, 10000.0, explicit, 64).mscale == 1.25
    assert make_rotary(8, 10000.0, scaling, 16).mscale == 1.0  # no extension: factor 1


@torch.no_grad()
def test_longrope_matches_transformers_phi3_rotary():
    transformers = pytest.importorskip("transformers")
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    short, long = [1.0, 1.5, 2.0, 3.0], [2.0, 4.0, 8.0, 16.0]
    hf = transformers.Phi3Config(
        hidden_size=64, num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=64,
        original_max_position_embeddings=16, rope_theta=10000.0,
        rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long},
    )  # fmt: skip
    theirs = Phi3RotaryEmbedding(hf)
    scaling = RopeScaling("longrope", original_max_position_embeddings=16, short_factor=short, long_factor=long)
    ours = make_rotary(8, 10000.0, scaling, 64)
    x = torch.zeros(1, 1, 8)
    for end in (10, 40):
        positions = torch.arange(end)[None]
        want_cos, want_sin = theirs(x, positions)
        got_cos, got_sin = ours(positions)
        assert torch.allclose(got_cos, want_cos, atol=1e-5) and torch.allclose(got_sin, want_sin, atol=1e-5)


@torch.no_grad()
def test_mtp_logits_are_soft_capped_too():
    model = spread_weights(OmniCoder(_gqa(final_logit_softcap=0.5, logit_multiplier=4.0)).eval())
    out = model(torch.randint(0, 256, (1, 6)), torch.arange(6)[None])
    assert out.mtp_logits.abs().max().item() <= 0.5 and out.logits.abs().max().item() <= 0.5


def test_gelu_tanh_is_the_tanh_approximation():
    model = OmniCoder(_gqa(mlp_activation="gelu_tanh"))
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(model.layers[0].mlp.act(x), F.gelu(x, approximate="tanh"))
