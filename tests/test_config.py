import json

import pytest

from omnicoder.config import OmniCoderConfig, RopeScaling
from omnicoder.errors import OmniCoderError
from omnicoder.presets import PRESETS, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name, tmp_path):
    config = preset(name)
    config.save(tmp_path / "config.json")
    loaded = OmniCoderConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert json.loads(loaded.to_json()) == config.to_dict()


def test_rope_scaling_round_trip():
    config = OmniCoderConfig(rope_scaling=RopeScaling("yarn", 4.0, 2048))
    assert OmniCoderConfig.from_json(config.to_json()).rope_scaling == RopeScaling("yarn", 4.0, 2048)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_heads": 6, "n_kv_heads": 4}, "multiple of n_kv_heads"),
        ({"head_dim": 15}, "even"),
        ({"d_model": 0}, "d_model must be > 0"),
        ({"attention": "sparse"}, "unknown"),
        ({"attention": "mla", "kv_latent_dim": 0, "rope_head_dim": 8}, "kv_latent_dim"),
        ({"attention": "mla", "kv_latent_dim": 32, "rope_head_dim": 7}, "rope_head_dim"),
        ({"attention": "mla", "kv_latent_dim": 32, "rope_head_dim": 8, "qk_norm": True}, "qk_norm"),
        ({"eos_id": 999}, "outside the vocabulary"),
        ({"n_mtp": -1}, "n_mtp"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "original_max_position_embeddings"),
        ({"rope_scaling": {"type": "ntk"}}, "unknown"),
        ({"rope_scaling": {"type": "linear", "factor": 0.5}}, "factor"),
        ({"layers": 3}, "unknown field"),
    ],
)
def test_validation_errors(changes, message):
    data = {**OmniCoderConfig().to_dict(), **changes}
    with pytest.raises(OmniCoderError, match=message):
        OmniCoderConfig.from_dict(data)


def test_corrupt_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(OmniCoderError, match="not valid JSON"):
        OmniCoderConfig.load(path)


def test_kv_shapes():
    gqa, mla = preset("test-gqa"), preset("test-mla")
    assert (gqa.kv_heads, gqa.kv_key_dim, gqa.kv_value_dim) == (2, 16, 16)
    assert (mla.kv_heads, mla.kv_key_dim, mla.kv_value_dim) == (1, 40, 0)
    assert mla.kv_floats_per_token_per_layer == 40


def _family_config() -> OmniCoderConfig:
    """Every issue-#20 field away from its default."""
    return OmniCoderConfig(
        n_layers=3,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_local_theta=10000.0,
        nope_layers=[1],
        rotary_dim=8,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(
            "longrope", original_max_position_embeddings=16, short_factor=[1.0, 1.5, 2.0, 2.5], long_factor=[2.0] * 4
        ),
        attention_scale=0.2,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        norm_placement="sandwich",
        qk_norm=True,
        qk_norm_scope="projection",
        mlp_activation="gelu_tanh",
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        logit_multiplier=0.125,
    ).validate()


def test_family_fields_round_trip(tmp_path):
    config = _family_config()
    config.save(tmp_path / "config.json")
    loaded = OmniCoderConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert loaded.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert loaded.rope_scaling.short_factor == [1.0, 1.5, 2.0, 2.5]
    assert json.loads(loaded.to_json()) == config.to_dict()
    data = config.to_dict()
    built = OmniCoderConfig.from_dict(data)
    data["nope_layers"].append(2)  # the config does not share its lists with the dict it came from
    assert built.nope_layers == [1]


def test_family_defaults_keep_old_configs():
    """A config.json written before #20 (no new fields) loads with the defaults: plain Llama-style layers."""
    old = {k: v for k, v in OmniCoderConfig().to_dict().items() if k not in {"layer_types", "nope_layers"}}
    config = OmniCoderConfig.from_dict(old)
    assert config.layer_types == [] and config.norm_placement == "pre" and config.rope_dim == config.head_dim


def test_per_layer_helpers():
    config = _family_config()
    assert [config.layer_window(i) for i in range(3)] == [8, 0, 8]
    assert [config.uses_rope(i) for i in range(3)] == [True, False, True]
    assert [config.uses_local_rope(i) for i in range(3)] == [True, False, True]
    assert config.rope_dim == 8 and config.softmax_scale == 0.2
    mistral = OmniCoderConfig(sliding_window=4)
    assert [mistral.layer_window(i) for i in range(4)] == [4] * 4
    assert OmniCoderConfig().softmax_scale == 64**-0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_types": ["full_attention"]}, "layer_types has 1 entries"),
        ({"layer_types": ["full_attention"] * 3 + ["local"]}, "layer_types entry 'local'"),
        ({"layer_types": ["sliding_attention"] * 4}, "sliding_window > 0"),
        ({"layer_types": "full_attention"}, "layer_types must be a list"),
        ({"nope_layers": [4]}, "nope_layers entry 4"),
        ({"nope_layers": [1, 1]}, "twice"),
        ({"nope_layers": [True]}, r"nope_layers\[0\] must be of type int"),
        ({"rotary_dim": 7}, "rotary_dim"),
        ({"rotary_dim": 128}, "rotary_dim"),
        ({"rope_local_theta": -1.0}, "rope_local_theta"),
        ({"attention_scale": -0.1}, "attention_scale"),
        ({"attn_logit_softcap": -1.0}, "attn_logit_softcap"),
        ({"final_logit_softcap": float("inf")}, "finite"),
        ({"norm_placement": "peri"}, "norm_placement"),
        ({"qk_norm_scope": "projection"}, "needs qk_norm"),
        ({"qk_norm": True, "qk_norm_scope": "row"}, "qk_norm_scope"),
        ({"mlp_activation": "relu"}, "mlp_activation"),
        ({"residual_multiplier": 0.0}, "residual_multiplier"),
        ({"rope_scaling": {"type": "longrope", "original_max_position_embeddings": 8}}, "short_factor"),
        (
            {
                "rope_scaling": {
                    "type": "longrope",
                    "original_max_position_embeddings": 8,
                    "short_factor": [1.0] * 3,
                    "long_factor": [1.0] * 3,
                }
            },
            "need 32 entries",
        ),
        ({"rope_scaling": {"type": "yarn", "original_max_position_embeddings": 8, "long_factor": [1.0]}}, "longrope"),
        ({"attention": "mla", "kv_latent_dim": 32, "rope_head_dim": 8, "rotary_dim": 8}, "rotary_dim is not"),
        ({"attention": "mla", "kv_latent_dim": 32, "rope_head_dim": 8, "attn_logit_softcap": 5.0}, "softcap is not"),
    ],
)
def test_family_validation_errors(changes, message):
    data = {**OmniCoderConfig().to_dict(), **changes}
    with pytest.raises(OmniCoderError, match=message):
        OmniCoderConfig.from_dict(data)
