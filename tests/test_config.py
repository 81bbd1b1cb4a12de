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
