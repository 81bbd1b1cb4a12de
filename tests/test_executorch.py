"""ExecuTorch target: .pte parity with PyTorch (both KV modes, both attention kinds), metadata methods, the runner,
and 8da4w quality. Lowering is slow (tens of seconds per program), so bundles are exported once per session and
only on first use; beyond a tiny GQA model in both KV modes, everything is marked slow."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="executorch is not installed (pip install omnicoder[executorch])")

from omnicoder.export.executorch_export import ExecuTorchExportOptions, export_executorch_bundle  # noqa: E402
from omnicoder.runtimes import executorch_generate as runner  # noqa: E402
from omnicoder.runtimes.bundle import finalize_bundle, open_bundle  # noqa: E402
from omnicoder.runtimes.decode_loop import generate_ids  # noqa: E402
from omnicoder.runtimes.executorch_session import ExecuTorchProgram, create_backend, load_method  # noqa: E402
from omnicoder.runtimes.graph_backend import GraphBackend  # noqa: E402
from omnicoder.runtimes.kv_paging import PagingPolicy  # noqa: E402
from omnicoder.runtimes.sampling import Sampler, SamplingParams  # noqa: E402

from omnicoder.config import OmniCoderConfig  # noqa: E402
from omnicoder.errors import OmniCoderError  # noqa: E402
from omnicoder.generate import TorchBackend  # noqa: E402
from omnicoder.model import OmniCoder  # noqa: E402
from omnicoder.presets import preset  # noqa: E402
from omnicoder.tokenizer import ByteTokenizer  # noqa: E402


def _tiny(name: str, window: int = 0):
    def make():
        torch.manual_seed(0)
        config = OmniCoderConfig.from_dict({**preset(name).to_dict(), "sliding_window": window})
        return OmniCoder(config).eval(), ByteTokenizer()

    return make


def _default():
    from omnicoder.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("default")


VARIANTS = {  # name -> (model maker, export options; "cli": argv for omnicoder-export instead of the Python API)
    "gqa-cli": (_tiny("test-gqa"), {"cli": ["--max-seq-len", "96"]}),
    "default-fp32": (_default, {}),
    "default-8da4w": (_default, {"weights": "8da4w"}),
    "gqa-buffer": (_tiny("test-gqa"), {}),
    "mla-buffer": (_tiny("test-mla"), {}),
    "gqa-io": (_tiny("test-gqa"), {"kv": "io"}),
    "mla-io": (_tiny("test-mla"), {"kv": "io"}),
    "gqa-window-buffer": (_tiny("test-gqa", window=8), {}),
    "gqa-buffer-reference": (_tiny("test-gqa"), {"attention": "reference"}),
    "gqa-8da4w-head-embedding": (  # what a subword vocabulary (> 1024) gets by default, forced on a tiny model
        _tiny("test-gqa"),
        {"weights": "8da4w", "max_seq_len": 40, "quantize_lm_head": True, "quantize_embedding": True},
    ),
}


@pytest.fixture(scope="session")
def et_bundle(tmp_path_factory):
    """name -> (reference fp32 model, bundle dir), exported on first use."""
    root = tmp_path_factory.mktemp("executorch")
    made: dict = {}

    def get(name: str):
        if name not in made:
            make, options = VARIANTS[name]
            model, tokenizer = make()
            reference, _ = make()
            if "cli" in options:
                from omnicoder.export import cli

                from omnicoder.weights import save_model

                model_dir = save_model(model, root / f"{name}-model")
                argv = ["--target", "executorch", "--model", str(model_dir), "--out", str(root / name)]
                assert cli.main([*argv, *options["cli"]]) == 0
            else:
                export_executorch_bundle(model, tokenizer.to_json(), root / name, ExecuTorchExportOptions(**options))
            made[name] = (reference.eval(), root / name)
        return made[name]

    return get


def greedy_ids(backend, prompt: list[int], steps: int, eos: int) -> list[int]:
    ids, _ = generate_ids(backend, prompt, steps, Sampler(SamplingParams(temperature=0)), eos_id=eos)
    return ids


def step_logits(backend, tokens: list[int], prefill: int) -> np.ndarray:
    """Logits of every token: a prefill of `prefill` tokens, then one token per step."""
    backend.reset()
    rows = [backend.step_all(tokens[:prefill], list(range(prefill)))]
    rows += [backend.step_all([tokens[i]], [i]) for i in range(prefill, len(tokens))]
    return np.concatenate(rows)


def initialized_planned_tensors(pte) -> int:
    """Memory-planned (mutable) tensors of `forward` that carry initial data in the .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte.read_bytes())
    plan = next(p for p in getattr(program, "program", program).execution_plan if p.name == "forward")
    return sum(
        1
        for v in plan.values
        if getattr(v.val, "allocation_info", None) is not None and getattr(v.val, "data_buffer_idx", 0)
    )


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens]), torch.arange(len(tokens))[None], heads=False).logits[0].numpy()


# ---- default suite: a tiny GQA model exported by the CLI, fp32, --kv buffer, capacity 96 < its context 128 ---
# (its --kv io twin runs in the default suite too: test_tiny_programs_match_pytorch[gqa-io])


def test_tiny_gqa_greedy_tokens_and_logits_match_pytorch(et_bundle):
    model, path = et_bundle("gqa-cli")
    backend = create_backend(open_bundle(path))
    prompt = ByteTokenizer().encode("def fibonacci(n):\n    ", add_bos=True)
    eos = model.config.eos_id
    got = greedy_ids(backend, prompt, 32, eos)
    assert got == greedy_ids(TorchBackend(model), prompt, 32, eos) and len(got) == 32
    tokens = prompt + got
    diff = np.abs(step_logits(backend, tokens, len(prompt)) - torch_logits(model, tokens)).max()
    assert diff < 1e-4, diff


def test_manifest_and_runner_metadata_methods(et_bundle):
    model, path = et_bundle("gqa-cli")
    bundle = open_bundle(path)
    c = model.config
    assert bundle.manifest["target"] == "executorch" and bundle.graph["file"] == "model.pte"
    assert bundle.manifest["precision"]["weights"] == "fp32" and bundle.manifest["precision"]["kv"] == "fp32"
    section = bundle.graph["executorch"]
    assert section["kv_mode"] == "buffer" and section["max_seq_len"] == 96 < c.max_seq_len
    assert section["kv_buffers"]["names"] == [f"{kv}_cache_{i}" for i in range(c.n_layers) for kv in "kv"]
    assert initialized_planned_tensors(path / "model.pte") == 2 * c.n_layers  # the KV buffers, zeros
    assert section["delegated_nodes"] > section["non_delegated_nodes"] > 0
    assert section["non_delegated_ops"]["llama.custom_sdpa.default"] == c.n_layers
    assert section["non_delegated_ops"]["llama.update_cache.default"] == 2 * c.n_layers
    assert "kv_paging" in bundle.manifest["sidecars"]
    per_token = 4 * c.n_layers * c.kv_heads * (c.kv_key_dim + c.kv_value_dim)  # fp32 K and V rows, every layer
    assert section["kv_buffers"]["bytes"] == {"total": 96 * per_token, "per_token": per_token}
    expected = {
        "get_max_seq_len": 96,
        "get_max_context_len": 96,
        "get_vocab_size": c.vocab_size,
        "get_bos_id": c.bos_id,
        "get_eos_ids": c.eos_id,  # a one-element list in the program
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    for name, value in expected.items():
        (out,) = load_method(bundle, method=name).execute([])
        assert out == value, name
    assert section["methods"]["get_eos_ids"] == [c.eos_id]


def run_cli(main, argv, capfd):
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def test_runner_prints_the_same_text_as_pytorch(et_bundle, tmp_path, capfd):
    from omnicoder.cli import generate
    from omnicoder.weights import save_model

    model, path = et_bundle("gqa-cli")
    model_dir = save_model(model, tmp_path / "model")
    args = ["--prompt", "import os\n", "--max-new-tokens", "24", "--temperature", "0.9", "--top-k", "20", "--seed", "3"]
    code_t, out_t, _ = run_cli(generate.main, ["--model", str(model_dir), *args], capfd)
    code_e, out_e, err_e = run_cli(runner.main, ["--bundle", str(path), *args], capfd)
    assert code_t == code_e == 0 and out_e == out_t and out_t
    assert "prefill:" in err_e and "decode:" in err_e and "peak RSS" in err_e
    code, out, _ = run_cli(runner.main, ["--bundle", str(path), *args, "--json"], capfd)
    stats = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and stats["prompt_tokens"] == 11 and stats["decode_tok_s"] > 0


def test_runner_score_matches_pytorch(et_bundle, tmp_path, capfd):
    from omnicoder.evaluate import bits_per_byte

    model, path = et_bundle("gqa-cli")
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\nfor name in os.listdir('.'):\n    print(name.upper())\n" * 6)
    argv = ["--bundle", str(path), "--score", str(sample), "--json"]
    code, out, _ = run_cli(runner.main, argv, capfd)  # windows of the program's 96 tokens
    got = json.loads(out.strip().splitlines()[-1])["bits_per_byte"]
    want = bits_per_byte(model, [sample.read_bytes()], window=96)["bits_per_byte"]
    assert code == 0 and abs(got - want) < 1e-5 * want


def test_bad_inputs_are_one_line_errors(et_bundle, tmp_path, capfd):
    _, path = et_bundle("gqa-cli")
    onnx_like = tmp_path / "onnx-like"
    shutil.copytree(path, onnx_like)
    manifest = json.loads((onnx_like / "manifest.json").read_text())
    finalize_bundle(onnx_like, {**manifest, "target": "onnx"})
    good = str(path)
    cases = [
        (["--bundle", good, "--prompt", "x", "--window", "64"], "need a --kv io bundle"),
        (["--bundle", good, "--prompt", "x" * 100], "longer than the model's context (96)"),
        (["--bundle", good, "--score", good + "/tokenizer.json", "--score-window", "97"], "exceeds"),
        (["--bundle", str(onnx_like), "--prompt", "x"], "needs an executorch bundle"),
        (["--bundle", good, "--prompt", "x", "--threads", "-1"], "--threads"),
        (["--bundle", good, "--score", str(tmp_path / "missing.py")], "not a readable file"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(runner.main, argv, capfd)
        assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert needle in err, err
    with pytest.raises(OmniCoderError, match="max-seq-len"):
        ExecuTorchExportOptions(max_seq_len=1).validate(preset("test-gqa"))


def test_8da4w_lm_head_policy():
    tied = preset("test-gqa")
    untied = OmniCoderConfig.from_dict({**tied.to_dict(), "tie_embeddings": False, "vocab_size": 4096})
    small_untied = OmniCoderConfig.from_dict({**tied.to_dict(), "tie_embeddings": False})
    q = ExecuTorchExportOptions(weights="8da4w")
    assert not q.lm_head_quantized(tied) and q.lm_head_quantized(untied) and not q.lm_head_quantized(small_untied)
    assert not ExecuTorchExportOptions().lm_head_quantized(untied)
    assert ExecuTorchExportOptions(weights="8da4w", quantize_lm_head=True).lm_head_quantized(small_untied)


def test_quantized_embedding_lowers_to_embedding_byte_and_runs(tmp_path):
    """torchao's weight-only int8 embedding (groups of 32) + quant fusion = quantized_decomposed::embedding_byte,
    which the runtime's quantized kernels run; the rows equal the dequantized table's."""
    from executorch.runtime import Runtime
    from omnicoder.export.executorch_export import lower_to_pte, quantize_embedding

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(300, 64)

        def forward(self, ids):
            return self.embed(ids) * 2.0

    torch.manual_seed(0)
    module = Lookup().eval()
    quantize_embedding(module, 8)
    ids = torch.tensor([[1, 7, 299]])
    program = torch.export.export(module, (ids,), strict=False)
    pte, summary = lower_to_pte(program, {}, [], quant_fusion=True)
    assert summary["non_delegated_ops"].get("quantized_decomposed.embedding_byte.default") == 1
    assert "torchao.dequantize_affine.default" not in summary["non_delegated_ops"]
    assert len(pte) < 300 * 64 * 2  # int8 codes + group scales, not fp32 (76.8 KB)
    (tmp_path / "m.pte").write_bytes(pte)
    from executorch.kernels import quantized  # noqa: F401

    got = Runtime.get().load_program(str(tmp_path / "m.pte")).load_method("forward").execute([ids])[0]
    with torch.no_grad():
        want = module(ids)
    assert torch.allclose(got, want, atol=1e-6)


def test_embedding_policy_follows_the_vocabulary():
    tied = preset("test-gqa")
    subword = OmniCoderConfig.from_dict({**tied.to_dict(), "vocab_size": 4096})
    q = ExecuTorchExportOptions(weights="8da4w")
    assert q.embedding_quantized(subword) and q.lm_head_quantized(subword)  # tied: an untied quantized copy
    assert not q.embedding_quantized(tied) and not ExecuTorchExportOptions().embedding_quantized(subword)
    with pytest.raises(OmniCoderError, match="embedding bits 3"):
        ExecuTorchExportOptions(embedding_bits=3).validate(tied)


# ---- slow: the default model, both attention kinds in both KV modes, sliding window, 8da4w ----------------


@pytest.mark.slow
def test_8da4w_head_and_embedding_program(et_bundle):
    """8da4w with the LM head and embedding quantized: the program runs what the quantized PyTorch model does,
    the KV buffers follow --max-seq-len, and the tied fp32 table has left the .pte."""
    _, path = et_bundle("gqa-8da4w-head-embedding")
    bundle = open_bundle(path)
    precision, section = bundle.manifest["precision"], bundle.graph["executorch"]
    assert precision["embedding"].startswith("int8 weight-only") and "untied copy" in precision["lm_head"]
    assert section["non_delegated_ops"]["quantized_decomposed.embedding_byte.default"] == 1
    assert "aten.embedding.default" not in section["non_delegated_ops"]
    assert section["max_seq_len"] == 40 and section["kv_buffers"]["bytes"]["total"] == 40 * 512
    from omnicoder.export.executorch_export import quantize_8da4w, quantize_embedding

    model, _ = VARIANTS["gqa-8da4w-head-embedding"][0]()
    quantize_8da4w(model, lm_head=True)  # the export's own quantization of the same weights: the same codes
    quantize_embedding(model, 8)
    got = step_logits(create_backend(bundle), TOKENS, 9)
    want = torch_logits(model, TOKENS)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
def test_default_model_32_greedy_steps_match_pytorch(et_bundle):
    model, path = et_bundle("default-fp32")
    backend = create_backend(open_bundle(path))
    prompt = ByteTokenizer().encode("def fibonacci(n):\n    ", add_bos=True)
    got = greedy_ids(backend, prompt, 32, model.config.eos_id)
    assert got == greedy_ids(TorchBackend(model), prompt, 32, model.config.eos_id) and len(got) == 32
    tokens = prompt + got
    assert np.abs(step_logits(backend, tokens, len(prompt)) - torch_logits(model, tokens)).max() < 1e-4
    section = open_bundle(path).graph["executorch"]
    assert section["max_seq_len"] == 512 and section["kv_buffers"]["names"] == [f"k_cache_{i}" for i in range(4)]


TOKENS = [256, *b"def add(a, b):\n    return a + b\n"]


SLOW = pytest.mark.slow


@pytest.mark.parametrize(  # gqa-io in the default run: it is the one program driven through GraphBackend
    "name",
    [pytest.param("mla-buffer", marks=SLOW), "gqa-io", pytest.param("mla-io", marks=SLOW),
     pytest.param("gqa-window-buffer", marks=SLOW)],
)  # fmt: skip
def test_tiny_programs_match_pytorch(et_bundle, name):
    model, path = et_bundle(name)
    backend = create_backend(open_bundle(path))
    got = step_logits(backend, TOKENS, 9)
    diff = np.abs(got - torch_logits(model, TOKENS)).max()
    assert diff < 1e-4, diff
    assert backend.full_logits(np.array([TOKENS]))[0].shape == got.shape


@pytest.mark.slow
def test_reference_attention_equals_fused(et_bundle):
    model, fused = et_bundle("gqa-buffer")
    _, reference = et_bundle("gqa-buffer-reference")
    a = step_logits(create_backend(open_bundle(fused)), TOKENS, 5)
    b = step_logits(create_backend(open_bundle(reference)), TOKENS, 5)
    assert np.abs(a - b).max() < 1e-4
    section = open_bundle(reference).graph["executorch"]
    assert "llama.custom_sdpa.default" not in section["non_delegated_ops"]
    assert section["methods"]["use_sdpa_with_kv_cache"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gqa-io", "mla-io"])
def test_io_program_is_driven_by_the_paged_kv_cache(et_bundle, name):
    """Window of 2 pages + up to 8 predicted pages covers every page: paged decode equals contiguous KV."""
    _, path = et_bundle(name)
    bundle = open_bundle(path)
    method = load_method(bundle)
    tokens = [256, *range(40, 110)]
    contiguous = step_logits(GraphBackend(bundle, ExecuTorchProgram(bundle, method)), tokens, 1)
    paged = GraphBackend(
        bundle, ExecuTorchProgram(bundle, method), PagingPolicy(page_len=8, window=16, predicted_pages=8)
    )
    assert np.abs(step_logits(paged, tokens, 1) - contiguous).max() < 1e-4
    assert len(paged.cache.attended) == len(paged.cache.pages) > 2


@pytest.mark.slow
def test_io_program_speculative_decoding_equals_greedy(et_bundle, capfd):
    _, path = et_bundle("gqa-io")
    args = ["--bundle", str(path), "--prompt", "def f(x):", "--max-new-tokens", "40", "--temperature", "0"]
    code, plain, _ = run_cli(runner.main, args, capfd)
    code_s, spec, err = run_cli(runner.main, [*args, "--speculative", "2"], capfd)
    assert code == code_s == 0 and spec == plain and "drafts accepted" in err
    buffer_args = ["--bundle", str(et_bundle("gqa-cli")[1]), *args[2:], "--speculative", "2"]
    code, _, err = run_cli(runner.main, buffer_args, capfd)
    assert code != 0 and "needs a --kv io bundle" in err


@pytest.mark.slow
def test_8da4w_heldout_bits_per_byte_within_3_percent_of_fp32(et_bundle):
    from omnicoder.runtimes.scoring import bits_per_byte

    from omnicoder.cli.evaluate import truncate
    from omnicoder.data import find_corpus, read_documents

    docs = truncate(read_documents(find_corpus().heldout), 16384)
    scores = {}
    for name in ("default-fp32", "default-8da4w"):
        bundle = open_bundle(et_bundle(name)[1])
        backend = create_backend(bundle)
        scores[name] = bits_per_byte(backend.full_logits, docs, 256, bundle.model["pad_id"], 512)["bits_per_byte"]
    delta = scores["default-8da4w"] / scores["default-fp32"] - 1
    assert abs(delta) < 0.03, scores
    manifest = open_bundle(et_bundle("default-8da4w")[1]).manifest
    linears = 6 * manifest["model"]["n_layers"] + manifest["model"]["n_mtp"]  # q, kv_down, o, gate, up, down; MTP
    assert manifest["precision"]["weights"] == "8da4w" and manifest["precision"]["quantized_layers"] == linears
