"""What an hf: checkpoint's tokenizer does beyond tokenizer.json: BOS exactly where transformers' own tokenizer adds
one (checked against AutoTokenizer over tokenizer classes, add_bos_token values and post-processors), and every EOS
id of generation_config.json (an id or a list) stops generation."""

from __future__ import annotations

import json

import pytest
import torch

from omnicoder.hf_tokenizer_fields import read_checkpoint_fields
from omnicoder.tokenizer import HFTokenizer

from .test_hf_import import make_hf_model, train_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")

CLASSES = [
    "PreTrainedTokenizerFast",
    "LlamaTokenizerFast",
    "GemmaTokenizerFast",
    "GPT2TokenizerFast",
    "Qwen2TokenizerFast",
    "GPTNeoXTokenizerFast",
    "CodeLlamaTokenizerFast",
    "CohereTokenizerFast",
]


@pytest.fixture(scope="module")
def base_tokenizer():
    return train_tokenizer()


def _bos_template() -> dict:
    from tokenizers import processors

    processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )  # Llama 3's shape
    return json.loads(processor.__getstate__())


def _checkpoint(base, directory, tokenizer_class, post_processor, flag, model_type="llama"):
    base.save_pretrained(directory)
    spec = json.loads((directory / "tokenizer.json").read_text())
    spec["post_processor"] = _bos_template() if post_processor == "bos" else None
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("add_bos_token", None)
    config.pop("tokenizer_class", None)
    if tokenizer_class:
        config["tokenizer_class"] = tokenizer_class
    if flag is not None:
        config["add_bos_token"] = flag
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    hf_config = {"model_type": model_type, "vocab_size": 320, "bos_token_id": 0, "eos_token_id": 1}
    (directory / "config.json").write_text(json.dumps(hf_config))
    return spec, hf_config


def _ours(directory, spec, hf_config) -> bool:
    text = (directory / "tokenizer.json").read_text()
    tokenizer = HFTokenizer(text, bos_id=0, eos_id=1)
    return read_checkpoint_fields(directory, hf_config, spec, tokenizer)["add_bos"]


def _transformers(directory) -> bool:
    return transformers.AutoTokenizer.from_pretrained(directory)("the fox").input_ids[0] == 0


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_add_bos_as_transformers_decides(tokenizer_class, base_tokenizer, tmp_path):
    for post_processor in ("none", "bos"):
        for flag in (None, True, False):
            directory = tmp_path / f"{post_processor}-{flag}"
            directory.mkdir()
            spec, hf_config = _checkpoint(base_tokenizer, directory, tokenizer_class, post_processor, flag)
            expected = _transformers(directory)
            assert _ours(directory, spec, hf_config) == expected, (tokenizer_class, post_processor, flag)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen2", "olmo2"])
def test_add_bos_without_tokenizer_class_follows_the_model_type(model_type, base_tokenizer, tmp_path):
    """No tokenizer_class anywhere: AutoTokenizer picks the model type's class (Llama and Gemma add BOS)."""
    for flag in (None, False):
        directory = tmp_path / str(flag)
        directory.mkdir()
        spec, hf_config = _checkpoint(base_tokenizer, directory, None, "none", flag, model_type)
        assert _ours(directory, spec, hf_config) == _transformers(directory), (model_type, flag)


@pytest.mark.parametrize("eos", [5, [1, 5, 7]])
def test_generation_config_eos_ids_are_stop_ids(eos, base_tokenizer, tmp_path):
    spec, hf_config = _checkpoint(base_tokenizer, tmp_path, "PreTrainedTokenizerFast", "none", None)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    tokenizer = HFTokenizer((tmp_path / "tokenizer.json").read_text(), bos_id=0, eos_id=1)
    tokenizer.set_fields(**read_checkpoint_fields(tmp_path, hf_config, spec, tokenizer))
    assert set(tokenizer.stop_ids) == {1, *([eos] if isinstance(eos, int) else eos)}
    assert set(tokenizer.to_json().fields["stop_ids"]) == set(tokenizer.stop_ids)  # what the bundle records


def test_generation_stops_at_every_eos_id(tmp_path):
    """A second EOS id listed only in generation_config.json ends generation where the model emits it."""
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    from omnicoder.generate import TorchBackend
    from omnicoder.loading import load_model_and_tokenizer

    directory = tmp_path / "llama"
    hf_model = make_hf_model("llama", directory, seed=5)
    prompt = [0, 40, 41, 42, 43]
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        greedy = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=2)
    greedy = greedy[0, len(prompt) :].tolist()
    at = next(i for i, t in enumerate(greedy) if i >= 2 and t not in greedy[:i] and t != 1)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, greedy[at]]}))
    model, tokenizer = load_model_and_tokenizer(f"hf:{directory}")
    assert greedy[at] in tokenizer.stop_ids
    out, stats = generate_ids(
        TorchBackend(model), prompt, 12, Sampler(SamplingParams(temperature=0.0)), tokenizer.stop_ids
    )
    assert out == greedy[:at] and stats.stop_reason == "eos"  # the stop id itself is not part of the output
