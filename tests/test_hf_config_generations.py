"""config.json of both transformers generations -> OmniCoderConfig (omnicoder.hf_config / omnicoder.hf_rope).

transformers 4.x writes top-level `rope_theta` / `rope_scaling` (and Gemma 3's `rope_local_base_freq`);
transformers 5.x writes `rope_parameters` instead. transformers 5 is not installed here: the 5.x dicts below are
written by hand from transformers 5's layout (`rope_parameters` = {"rope_type", "rope_theta", scaling fields},
or one such dict per layer type, {"full_attention": {...}, "sliding_attention": {...}}, for Gemma 3).
"""

from __future__ import annotations

import json

import pytest

from omnicoder.errors import OmniCoderError
from omnicoder.hf_config import config_from_hf

BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=1,
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def llama(**fields):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **BASE, **fields}


def gemma3(**fields):
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        **BASE,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        **fields,
    }


def to_transformers5(config: dict) -> dict:
    """config.json of transformers 4.x rewritten in transformers 5's shape (by hand: transformers 5 is not
    installed here): rope_theta, rope_scaling and rope_local_base_freq move under rope_parameters."""
    out = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling", "rope_local_base_freq")}
    full = {"rope_type": "default", **(config.get("rope_scaling") or {}), "rope_theta": config["rope_theta"]}
    full.pop("type", None)
    if "type" in (config.get("rope_scaling") or {}):
        full["rope_type"] = config["rope_scaling"]["type"]
    if "rope_local_base_freq" in config:
        sliding = {"rope_type": "default", "rope_theta": config["rope_local_base_freq"]}
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
    else:
        out["rope_parameters"] = full
    return out


def test_transformers5_rope_theta_is_read_not_defaulted():
    """The issue's silent failure: a 5.x config imported with theta 10000 and no scaling."""
    v5 = llama(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    config = config_from_hf(v5)
    assert config.rope_theta == 500000.0 and config.rope_scaling.type == "none"


@pytest.mark.parametrize(
    "scaling",
    [
        None,
        {"rope_type": "linear", "factor": 2.0},
        LLAMA3,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        {"type": "linear", "factor": 3.0},  # the older spelling of rope_type
    ],
)
def test_both_generations_give_the_same_config(scaling):
    v4 = llama(rope_theta=500000.0, **({"rope_scaling": scaling} if scaling else {}))
    v5 = to_transformers5(v4)
    assert "rope_theta" not in v5 and "rope_scaling" not in v5
    assert config_from_hf(v5) == config_from_hf(v4)
    assert config_from_hf(v4).rope_theta == 500000.0


def test_gemma3_per_layer_type_rope_parameters():
    v4 = gemma3(rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 8.0})
    v5 = to_transformers5(v4)
    assert set(v5["rope_parameters"]) == {"full_attention", "sliding_attention"}
    for config in (config_from_hf(v4), config_from_hf(v5)):
        assert config.rope_theta == 1e6 and config.rope_local_theta == 1e4
        assert (config.rope_scaling.type, config.rope_scaling.factor) == ("linear", 8.0)
        assert config.layer_types == v4["layer_types"] and config.sliding_window == 8
    assert config_from_hf(v4) == config_from_hf(v5)


def test_gemma3_4x_defaults_local_base():
    """A 4.x Gemma 3 config without rope_local_base_freq: transformers' default 10000 for sliding layers."""
    config = config_from_hf(gemma3(rope_theta=1e6))
    assert config.rope_local_theta == 10000.0


def test_phi_longrope_both_generations():
    n = 16 * 3 // 4 // 2  # head_dim 16, partial_rotary_factor 0.75: 12 rotated dims, 6 frequencies
    scaling = {"type": "longrope", "short_factor": [1.0] * n, "long_factor": [2.0 + i for i in range(n)]}
    v4 = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        **BASE,
        "max_position_embeddings": 128,
        "original_max_position_embeddings": 32,
        "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0,
        "rope_scaling": scaling,
    }
    config = config_from_hf(v4)
    s = config.rope_scaling
    assert (s.type, s.original_max_position_embeddings, s.factor) == ("longrope", 32, 4.0)
    assert s.long_factor == scaling["long_factor"] and config.rotary_dim == 12
    assert s.attention_factor == pytest.approx((1 + 2 * 0.6931471805599453 / 3.4657359027997265) ** 0.5)
    assert config_from_hf(to_transformers5(v4)) == config
    # transformers 5 may keep partial_rotary_factor inside rope_parameters
    v5 = to_transformers5(v4)
    v5["rope_parameters"]["partial_rotary_factor"] = v5.pop("partial_rotary_factor")
    assert config_from_hf(v5) == config


def test_no_rope_field_uses_the_family_default():
    assert config_from_hf(llama()).rope_theta == 10000.0
    assert config_from_hf(gemma3()).rope_theta == 1e6


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rope_parameters": [10000.0]}, "rope_parameters must be a non-empty object"),
        ({"rope_parameters": {"rope_type": "default"}}, "rope_parameters lacks rope_theta"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "foo": 1}}, "unknown RoPE field.*foo"),
        (
            {"rope_parameters": {"chunked_attention": {"rope_theta": 1e4}, "full_attention": {"rope_theta": 1e4}}},
            "layer type.*chunked_attention",
        ),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "type 'dynamic'"),
        ({"rope_config": {"theta": 1e6}}, "unknown RoPE field.*rope_config"),
        ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}}, "disagrees with rope_parameters"),
        (
            {"rope_parameters": {"rope_theta": 5e5}, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
            "rope_scaling disagrees",
        ),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling type 'dynamic'"),
        ({"rope_theta": "big"}, "rope_theta must be a number"),
    ],
)
def test_unknown_rope_layouts_are_refused(fields, message):
    with pytest.raises(OmniCoderError, match=message) as info:
        config_from_hf(llama(**fields))
    assert "\n" not in str(info.value)


def test_scaled_sliding_rope_is_refused():
    params = {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
    }
    with pytest.raises(OmniCoderError, match="only plain RoPE on sliding layers"):
        config_from_hf(gemma3(rope_parameters=params))


@pytest.mark.parametrize(
    "hf, types, window",
    [
        (  # Gemma 2 configs older than layer_types: even layers slide
            {"architectures": ["Gemma2ForCausalLM"], **BASE, "head_dim": 16, "sliding_window": 8},
            ["sliding_attention", "full_attention"] * 2,
            8,
        ),
        (  # Gemma 3 configs with sliding_window_pattern (every 2nd layer full)
            {**gemma3(sliding_window_pattern=2), "layer_types": None},
            ["sliding_attention", "full_attention"] * 2,
            8,
        ),
        ({**gemma3(), "layer_types": ["sliding_attention"] * 4}, [], 8),  # all sliding: today's meaning
        (  # Qwen2 max_window_layers: layers from 2 on slide
            {"architectures": ["Qwen2ForCausalLM"], **BASE, "use_sliding_window": True, "sliding_window": 8,
             "max_window_layers": 2},
            ["full_attention"] * 2 + ["sliding_attention"] * 2,
            8,
        ),
        (  # Qwen2 layer_types without use_sliding_window: transformers attends fully
            {"architectures": ["Qwen2ForCausalLM"], **BASE, "sliding_window": None,
             "layer_types": ["sliding_attention"] * 4},
            [],
            0,
        ),
        ({"architectures": ["MistralForCausalLM"], **BASE, "sliding_window": 8}, [], 8),
        ({**llama(), "sliding_window": 8}, [], 0),  # Llama has no window
    ],
)  # fmt: skip
def test_layer_types(hf, types, window):
    config = config_from_hf({k: v for k, v in hf.items() if v is not None})
    assert (config.layer_types, config.sliding_window) == (types, window)


def test_layer_types_refusals():
    with pytest.raises(OmniCoderError, match="no sliding_window"):
        config_from_hf({**gemma3(), "sliding_window": None})
    with pytest.raises(OmniCoderError, match="must list 4 layer types"):
        config_from_hf(gemma3(layer_types=["full_attention"]))


def test_transformers5_config_imports_with_transformers_logits(tmp_path):
    """End to end: a Llama checkpoint whose config.json is rewritten in transformers 5's shape imports with the
    logits of the original (4.x) model; before the fix it ran with theta 10000."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from .test_hf_import import assert_logits_parity, make_hf_model

    directory = tmp_path / "v5"
    hf_model = make_hf_model("llama", directory, rope_theta=500.0, rope_scaling=LLAMA3)
    config_file = directory / "config.json"
    config_file.write_text(json.dumps(to_transformers5(json.loads(config_file.read_text()))))
    assert "rope_theta" not in json.loads(config_file.read_text())
    torch.manual_seed(0)
    assert_logits_parity(hf_model, directory, seq=48)
