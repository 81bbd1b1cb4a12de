"""Families of issue #20 through `--model hf:DIR`: Gemma 2, Gemma 3 text, Phi-3.5 / Phi-4-mini (longrope, partial
rotary), Granite 3.x, SmolLM3 and OLMo 2. Tiny random-weight models are built here with transformers 4.57
(save_pretrained into tmp dirs, a tokenizer trained here); the importer's logits must equal transformers' own
(fp32, <= 1e-4) on prompts that cross the sliding window and (Phi) longrope's switch from short to long factors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.hf_config import config_from_hf
from omnicoder.loading import load_model_and_tokenizer

from .test_hf_import import COMMON, VOCAB, train_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")
pytest.importorskip("tokenizers", reason="tokenizers is not installed")

LAYER_PAIR = ["sliding_attention", "full_attention"]
ROTARY = 12  # Phi-4-mini shape: head_dim 16 * partial_rotary_factor 0.75
FAMILIES = {
    # Gemma 2: sandwich norms, soft-caps (small, so tanh bends), query_pre_attn_scalar != head_dim, window 8
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            head_dim=16,
            num_hidden_layers=4,
            sliding_window=8,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            tie_word_embeddings=True,
        ),
    ),
    # Gemma 3 text: qk-norm, two RoPE bases (linear scaling on full layers only), 1 full layer in 2
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            head_dim=16,
            num_hidden_layers=4,
            sliding_window=8,
            layer_types=LAYER_PAIR * 2,
            query_pre_attn_scalar=16,
            rope_theta=1000.0,
            rope_local_base_freq=100.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            tie_word_embeddings=True,
        ),
    ),
    # Phi-3.5-mini shape: longrope over the whole head
    "phi3.5": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            max_position_embeddings=128,
            original_max_position_embeddings=32,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.1 * i for i in range(8)],
                "long_factor": [1.5 + 0.5 * i for i in range(8)],
            },
        ),
    ),
    # Phi-4-mini shape: partial rotary 0.75, longrope, tied embeddings
    "phi4-mini": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            partial_rotary_factor=0.75,
            max_position_embeddings=128,
            original_max_position_embeddings=32,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.1 * i for i in range(ROTARY // 2)],
                "long_factor": [2.0 + 0.5 * i for i in range(ROTARY // 2)],
            },
            tie_word_embeddings=True,
        ),
    ),
    # Granite 3.x: embedding / residual / attention multipliers, logits_scaling
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        dict(embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.09, logits_scaling=4.0),
    ),
    # SmolLM3: NoPE in every 2nd layer here (every 4th in the real model)
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(num_hidden_layers=4, no_rope_layer_interval=2)),
    # OLMo 2: post norms, q/k RMSNorm over the whole projection
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
}


def make_family_model(family: str, out, seed: int = 0, **overrides):
    """A random-weight HF model of `family` (eager attention), saved with a tokenizer into `out`."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides}, attn_implementation="eager")
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms start at 1 (Gemma: 0): randomize them so the mapping and the fold are tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(out)
    train_tokenizer().save_pretrained(out)
    return model


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-families")


def _hf_config(family: str, **overrides) -> dict:
    config_cls, _, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    return {**config.to_dict(), "architectures": [FAMILIES[family][1]]}


def test_gemma2_config():
    c = config_from_hf(_hf_config("gemma2"))
    assert (c.norm_placement, c.mlp_activation, c.qk_norm) == ("sandwich", "gelu_tanh", False)
    assert c.attention_scale == pytest.approx(24**-0.5)
    assert (c.attn_logit_softcap, c.final_logit_softcap) == (2.0, 3.0)
    assert c.embedding_multiplier == pytest.approx(math.sqrt(64))
    assert c.layer_types == LAYER_PAIR * 2 and c.sliding_window == 8 and c.rope_local_theta == 0
    assert c.tie_embeddings


def test_gemma3_config():
    c = config_from_hf(_hf_config("gemma3"))
    assert (c.norm_placement, c.qk_norm, c.qk_norm_scope) == ("sandwich", True, "head")
    assert (c.rope_theta, c.rope_local_theta, c.rope_scaling.type) == (1000.0, 100.0, "linear")
    assert (c.attn_logit_softcap, c.final_logit_softcap) == (0.0, 0.0)
    assert c.layer_types == LAYER_PAIR * 2


def test_phi_configs():
    c = config_from_hf(_hf_config("phi4-mini"))
    assert c.rotary_dim == ROTARY and c.rope_scaling.type == "longrope" and c.tie_embeddings
    assert c.rope_scaling.original_max_position_embeddings == 32
    assert c.rope_scaling.attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(32)))
    assert config_from_hf(_hf_config("phi3.5")).rotary_dim == 0


def test_granite_smollm3_olmo2_configs():
    g = config_from_hf(_hf_config("granite"))
    assert (g.embedding_multiplier, g.residual_multiplier, g.attention_scale) == (6.0, 0.3, 0.09)
    assert g.logit_multiplier == pytest.approx(0.25)
    assert config_from_hf(_hf_config("smollm3")).nope_layers == [1, 3]
    o = config_from_hf(_hf_config("olmo2"))
    assert (o.norm_placement, o.qk_norm, o.qk_norm_scope) == ("post", True, "projection")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architectures": ["Gemma3ForConditionalGeneration"]}, "needs the vision tower"),
        ({"architectures": ["StableLmForCausalLM"]}, "needs LayerNorm with bias"),
        ({"architectures": ["OlmoForCausalLM"]}, "OLMo 1's LayerNorm"),
        ({"architectures": ["Lfm2ForCausalLM"]}, "short-convolution layers"),
        ({"architectures": ["Qwen2MoeForCausalLM"], "num_experts": 8}, "mixture-of-experts"),
        ({"architectures": ["Gemma2ForCausalLM"], "hidden_activation": "gelu"}, "hidden_act 'gelu'"),
        ({"architectures": ["GraniteForCausalLM"], "logits_scaling": 0}, "logits_scaling must not be 0"),
    ],
)
def test_refusals_name_the_missing_feature(fields, message):
    config = {**COMMON, "model_type": "x", **fields}
    with pytest.raises(OmniCoderError, match=message):
        config_from_hf(config)


def _parity(hf_model, directory, seq: int, batch: int = 2) -> float:
    ours, _ = load_model_and_tokenizer(f"hf:{directory}")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids, torch.arange(seq).expand(batch, seq)).logits
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, family_root):
    directory = family_root / family
    hf_model = make_family_model(family, directory)
    # 40 tokens: past the window of 8 and past longrope's original 32 positions (long factors)
    assert _parity(hf_model, directory, seq=40) <= 1e-4


@pytest.mark.parametrize("family", ["phi3.5", "phi4-mini"])
def test_longrope_short_factors_below_the_switch(family, family_root):
    """A prompt within original_max_position_embeddings uses the short factors (transformers' dynamic rule)."""
    directory = family_root / f"short-{family}"
    hf_model = make_family_model(family, directory, seed=2)
    assert _parity(hf_model, directory, seq=20) <= 1e-4


def test_gemma2_without_softcaps_and_layer_types(family_root):
    """Gemma 2 configs older than layer_types alternate sliding and full layers; soft-caps may be off."""
    directory = family_root / "gemma2-old"
    hf_model = make_family_model("gemma2", directory, seed=4, attn_logit_softcapping=None, final_logit_softcapping=None)
    config = json.loads((directory / "config.json").read_text())
    assert config.pop("layer_types") == LAYER_PAIR * 2
    (directory / "config.json").write_text(json.dumps(config))
    assert _parity(hf_model, directory, seq=24) <= 1e-4


def _greedy_transformers(hf_model, prompt: list[int], steps: int) -> list[int]:
    hf_model.generation_config.eos_token_id = None  # exactly `steps` tokens
    with torch.no_grad():
        ids = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=2
        )
    return ids[0, len(prompt) :].tolist()


# transformers' Phi3ForCausalLM.prepare_inputs_for_generation drops the KV cache once, when the sequence first
# passes original_max_position_embeddings, and re-prefills everything with the long factors; our runners keep the
# keys cached with the short factors (transformers' forward semantics, test_longrope_decode_matches_transformers_cache)
PHI_REPREFILL = pytest.mark.xfail(
    reason="transformers' Phi-3 generate re-prefills the cache with long factors at the longrope switch", strict=False
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=PHI_REPREFILL) if f.startswith("phi") else f for f in FAMILIES]
)
def test_onnx_export_generates_transformers_tokens(family, family_root):
    """fp32 ONNX greedy == transformers greedy, prompt + 30 tokens: past the window and longrope's switch."""
    from omnicoder.export.cli import main as export_main

    from .conftest import greedy_onnx

    directory = family_root / f"onnx-{family}"
    hf_model = make_family_model(family, directory, seed=3)
    out = family_root / f"onnx-bundle-{family}"
    assert export_main(["--model", f"hf:{directory}", "--weights", "fp32", "--out", str(out)]) == 0
    prompt = [0, 40, 41, 42, 43, 44, 45, 46]
    assert greedy_onnx(out, prompt, 30) == _greedy_transformers(hf_model, prompt, 30)


@pytest.mark.parametrize("family", ["phi3.5", "phi4-mini"])
def test_longrope_decode_matches_transformers_cache(family, family_root):
    """Token by token through the KV cache across the switch (positions 0..39, original 32): our decode steps
    equal transformers' forward with its DynamicCache (short factors before the switch, long ones after)."""
    from transformers import DynamicCache

    from omnicoder.generate import TorchBackend

    directory = family_root / f"decode-{family}"
    hf_model = make_family_model(family, directory, seed=3)
    ours, _ = load_model_and_tokenizer(f"hf:{directory}")
    backend, cache = TorchBackend(ours), DynamicCache()
    backend.reset()
    torch.manual_seed(0)
    seq = torch.randint(3, VOCAB, (40,)).tolist()
    with torch.no_grad():
        expected = hf_model(torch.tensor([seq[:8]]), past_key_values=cache, use_cache=True).logits[0, -1]
        worst = float(abs(torch.as_tensor(backend.step(seq[:8], list(range(8)))) - expected).max())
        for p in range(8, 40):
            position = torch.tensor([p])
            out = hf_model(
                torch.tensor([[seq[p]]]), past_key_values=cache, position_ids=position[None], cache_position=position
            )
            got = torch.as_tensor(backend.step([seq[p]], [p]))
            worst = max(worst, float(abs(got - out.logits[0, -1]).max()))
    assert worst <= 1e-4
