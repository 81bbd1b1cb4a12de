"""`--model hf:DIR`: tiny random Hugging Face checkpoints (built here with transformers, tokenizer trained here)
import with logits equal to transformers' own, and their ONNX export generates transformers' greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.loading import load_model_and_tokenizer

from .conftest import greedy_onnx

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")
pytest.importorskip("tokenizers", reason="tokenizers is not installed")

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    initializer_range=0.1,
    tie_word_embeddings=False,
)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen2-window": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"use_sliding_window": True, "max_window_layers": 0, "sliding_window": 8},
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}
ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "mscale": 0.8,
        "mscale_all_dim": 0.5,
    },  # fmt: skip
}


def train_tokenizer():
    """A tiny byte-level BPE tokenizer trained here (no hub), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"] * 20
    tok.train_from_iterator(text + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_hf_model(family: str, out, seed: int = 0, shard: str | None = None, **overrides):
    """A random-weight HF model of `family`, saved (safetensors) with the tokenizer into `out`; returns it."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: randomize them so the mapping is really tested
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    train_tokenizer().save_pretrained(out)
    return model


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def assert_logits_parity(hf_model, directory, seq: int = 40) -> None:
    ours, _ = load_model_and_tokenizer(f"hf:{directory}")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, seq))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids, torch.arange(seq).expand(2, seq)).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, hf_root):
    directory = hf_root / family
    hf_model = make_hf_model(family, directory)
    assert_logits_parity(hf_model, directory)  # 40 tokens: Mistral's window of 8 matters


@pytest.mark.parametrize("variant", list(ROPE))
def test_rope_scaling_matches_transformers(variant, hf_root):
    directory = hf_root / f"rope-{variant}"
    hf_model = make_hf_model("llama", directory, rope_scaling=ROPE[variant])
    ours, _ = load_model_and_tokenizer(f"hf:{directory}")
    assert ours.config.rope_scaling.type == ROPE[variant]["rope_type"]
    assert_logits_parity(hf_model, directory, seq=64)  # past original_max_position_embeddings (32)


def test_sharded_tied_checkpoint(hf_root):
    directory = hf_root / "sharded"
    hf_model = make_hf_model("qwen2", directory, shard="60KB", tie_word_embeddings=True)
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    ours, tokenizer = load_model_and_tokenizer(f"hf:{directory}")
    assert ours.config.tie_embeddings and ours.lm_head.weight is ours.embed.weight
    assert tokenizer.decode(tokenizer.encode("the lazy dog")) == "the lazy dog"
    assert_logits_parity(hf_model, directory)


def greedy_transformers(hf_model, prompt: list[int], steps: int) -> list[int]:
    hf_model.generation_config.eos_token_id = None  # generate exactly `steps` tokens
    with torch.no_grad():
        ids = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=2
        )
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_onnx_export_generates_transformers_tokens(family, hf_root, capsys):
    from omnicoder.export.cli import main as export_main
    from omnicoder.runtimes.bundle import open_bundle

    directory = hf_root / f"gen-{family}"
    hf_model = make_hf_model(family, directory, seed=3)
    out = hf_root / f"bundle-{family}"
    assert export_main(["--model", f"hf:{directory}", "--weights", "fp32", "--out", str(out)]) == 0
    bundle = open_bundle(out)
    assert bundle.manifest["tokenizer"]["type"] == "huggingface"
    assert bundle.model["sliding_window"] == (8 if family == "mistral" else 0)
    assert bundle.tokenizer().decode(bundle.tokenizer().encode("def fibonacci")) == "def fibonacci"
    prompt = [0, *bundle.tokenizer().encode("def fibonacci(n):")]
    steps = 20  # prompt + 20 tokens runs well past Mistral's window of 8
    assert greedy_onnx(out, prompt, steps) == greedy_transformers(hf_model, prompt, steps)


def test_generate_cli_runs_hf_model(hf_root, capsys):
    from omnicoder.cli.generate import main as generate_main

    directory = hf_root / "cli-llama"
    make_hf_model("llama", directory)
    args = ["--model", f"hf:{directory}", "--prompt", "def fib", "--max-new-tokens", "6", "--temperature", "0"]
    assert generate_main(args) == 0
    assert "tok/s" in capsys.readouterr().err


def _write_config(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **COMMON, **fields}
    (directory / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return directory


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "GPT2LMHeadModel is not supported"),
        ({"architectures": ["MixtralForCausalLM"], "num_local_experts": 8}, "mixture-of-experts"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope needs a non-empty short_factor"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling type 'dynamic'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"mlp_bias": True}, "mlp_bias=true"),
        ({"partial_rotary_factor": 0.33}, "partial_rotary_factor 0.33 gives 5 rotated dims"),
        ({"hidden_size": None}, "lacks hidden_size"),
        (
            {
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
                "sliding_window": 8,
                "layer_types": ["full_attention", "chunked_attention"],
            },
            "layer type 'chunked_attention' is not supported",
        ),  # fmt: skip
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs original_max_position_embeddings"),
    ],
)
def test_unsupported_configs_fail_clearly(fields, message, tmp_path):
    directory = _write_config(tmp_path / "m", **fields)
    with pytest.raises(OmniCoderError, match=message):
        load_model_and_tokenizer(f"hf:{directory}")


def test_bad_directories_fail_clearly(tmp_path, hf_root):
    with pytest.raises(OmniCoderError, match="does not exist"):
        load_model_and_tokenizer(f"hf:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OmniCoderError, match="no config.json"):
        load_model_and_tokenizer(f"hf:{tmp_path / 'empty'}")
    pickled = _write_config(tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(OmniCoderError, match="pickle weights"):
        load_model_and_tokenizer(f"hf:{pickled}")
    with pytest.raises(OmniCoderError, match="no model.safetensors"):
        load_model_and_tokenizer(f"hf:{_write_config(tmp_path / 'noweights')}")
    directory = tmp_path / "notok"
    make_hf_model("llama", directory)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(OmniCoderError, match="no tokenizer.json"):
        load_model_and_tokenizer(f"hf:{directory}")
    small = tmp_path / "small"
    make_hf_model("llama", small, num_hidden_layers=1)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(OmniCoderError, match="do not match its config.json"):
        load_model_and_tokenizer(f"hf:{small}")


def test_eval_cli_scores_hf_model_per_byte(hf_root, tmp_path, capsys):
    from omnicoder.cli.evaluate import main as eval_main

    directory = hf_root / "eval-qwen2"
    hf_model = make_hf_model("qwen2", directory)
    text = "def fibonacci(n):\n    return n\n"
    (tmp_path / "a.py").write_text(text)
    assert eval_main(["--model", f"hf:{directory}", "--files", str(tmp_path / "a.py"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, tokenizer = load_model_and_tokenizer(f"hf:{directory}")
    ids = torch.tensor([[0, *tokenizer.encode(text)]])
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(ids).logits[0, :-1].double(), dim=-1)
    nats = -logp.gather(1, ids[0, 1:, None]).sum().item()
    assert result["bytes"] == len(text.encode()) and result["tokens"] == ids.shape[1] - 1
    assert result["bits_per_byte"] == pytest.approx(nats / np.log(2) / len(text.encode()), rel=1e-4)
    assert result["token_perplexity"] == pytest.approx(np.exp(nats / result["tokens"]), rel=1e-4)
    # the torch-free runner scores the exported bundle the same way (any tokenizer, not only bytes)
    from omnicoder.export.cli import main as export_main
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    out = tmp_path / "bundle"
    assert export_main(["--model", f"hf:{directory}", "--weights", "fp32", "--out", str(out)]) == 0
    capsys.readouterr()
    assert runner_main(["--bundle", str(out), "--score", str(tmp_path / "a.py"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (scored["bytes"], scored["tokens"]) == (result["bytes"], result["tokens"])
    assert scored["bits_per_byte"] == pytest.approx(result["bits_per_byte"], rel=1e-4)
    (tmp_path / "bad.py").write_bytes(b"ok \xff\n")
    assert runner_main(["--bundle", str(out), "--score", str(tmp_path / "bad.py")]) == 2
    assert "file 1 is not UTF-8 text" in capsys.readouterr().err


def test_mla_sliding_window_onnx_matches_eager(tmp_path):
    """The ONNX lowering of sliding-window attention (Mistral imports use the GQA form) also covers MLA."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.config import OmniCoderConfig
    from omnicoder.model import OmniCoder
    from omnicoder.presets import mla_test_config
    from tests.conftest import export_bundle

    torch.manual_seed(0)
    model = OmniCoder(OmniCoderConfig(**{**mla_test_config().to_dict(), "sliding_window": 6})).eval()
    export_bundle(model, tmp_path / "b", weights="fp32")
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        expected = model(ids, torch.arange(20)[None]).logits[0].numpy()
    bundle = open_bundle(tmp_path / "b")
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1)))
    backend.reset()
    prefill = backend.step_all(ids[0, :12].tolist(), list(range(12)))
    decode = [backend.step([int(t)], [12 + i]) for i, t in enumerate(ids[0, 12:])]
    got = np.concatenate([prefill, np.stack(decode)])
    assert np.abs(got - expected).max() < 1e-4
