"""`--model gguf:FILE`: tiny random models written here as llama.cpp GGUF files (llama.cpp's tensor names, its q/k
row interleaving for `llama`, a GPT-2 style BPE tokenizer and a chat template in the metadata, tensors in F32, F16,
Q8_0, Q4_0, Q4_1 and Q5_0) import with logits equal to transformers' own GGUF loading, and export to ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.loading import load_model_and_tokenizer

from .test_hf_import import VOCAB, make_hf_model, train_tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install omnicoder[hf])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install omnicoder[hf])")

T = gguf.GGMLQuantizationType
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
# per family: the GGUF architecture, and the quantization of the projections (the rest: F32 norms, Q8_0 embedding)
FAMILIES = {"llama": ("llama", T.Q4_0), "qwen2": ("qwen2", T.Q4_1), "qwen3": ("qwen3", T.Q5_0)}
NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf interleaving of q/k rows (what gguf_import undoes)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    layer, rest = name.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{NAMES[rest]}"


def write_gguf(hf_model, path, arch: str, qtype) -> None:
    """The HF model as a GGUF file the way llama.cpp's converter writes one."""
    config = hf_model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    spec = json.loads(train_tokenizer().backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token.startswith("<") else 1 for token, _ in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    for name, tensor in hf_model.state_dict().items():
        values = tensor.float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            values = permute(values, heads)
        kind = T.F32
        if values.ndim == 2:
            kind = T.Q8_0 if "embed" in name or "lm_head" in name else qtype
            if "o_proj" in name and arch == "qwen3":
                kind = T.F16
        data = values if kind == T.F32 else gguf.quants.quantize(values, kind)
        if kind == T.F16:
            data = values.astype(np.float16)
        writer.add_tensor(gguf_name(name), data, raw_dtype=None if kind in (T.F32, T.F16) else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    files = {}
    for family, (arch, qtype) in FAMILIES.items():
        extra = {"tie_word_embeddings": True, "head_dim": 128} if family == "qwen3" else {}  # transformers: 128
        hf_model = make_hf_model(family, root / f"hf-{family}", **extra)
        write_gguf(hf_model, root / f"{family}.gguf", arch, qtype)
        files[family] = root / f"{family}.gguf"
    return files


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_gguf_loading(gguf_files, family):
    path = gguf_files[family]
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ours, tokenizer = load_model_and_tokenizer(f"gguf:{path}")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids, torch.arange(24).expand(2, 24)).logits
    assert (got - expected).abs().max().item() <= 1e-4
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "def fibonacci(n):\n    return n"
    assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert (tokenizer.add_bos, tokenizer.stop_ids, tokenizer.chat_template) == (False, [1], TEMPLATE)


def test_quantized_blocks_are_kept_for_the_transcode(gguf_files):
    model, _ = load_model_and_tokenizer(f"gguf:{gguf_files['llama']}")
    blocks = model.gguf_blocks
    assert blocks["model.layers.0.self_attn.q_proj.weight"][0] == "q4_0"
    assert blocks["model.embed_tokens.weight"][0] == "q8_0"
    assert "model.layers.0.mlp.up_proj.weight" in blocks
    qwen3, _ = load_model_and_tokenizer(f"gguf:{gguf_files['qwen3']}")
    assert {kind for kind, _ in qwen3.gguf_blocks.values()} == {"q8_0"}  # Q5_0 (like K-quants), F16: dequantized


def test_onnx_export_of_a_gguf_file(gguf_files, tmp_path):
    from omnicoder.export.cli import main as export_main
    from omnicoder.runtimes.bundle import open_bundle

    from .conftest import greedy_onnx

    out = tmp_path / "bundle"
    assert export_main(["--model", f"gguf:{gguf_files['qwen2']}", "--weights", "fp32", "--out", str(out)]) == 0
    bundle = open_bundle(out)
    assert bundle.manifest["tokenizer"]["type"] == "huggingface"
    model, tokenizer = load_model_and_tokenizer(f"gguf:{gguf_files['qwen2']}")
    prompt = [0, *tokenizer.encode("def fibonacci(n):")]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids]), torch.arange(len(ids))[None]).logits[0, -1]
            ids.append(int(logits.argmax()))
    assert greedy_onnx(out, prompt, 12) == ids[len(prompt) :]


def test_bad_gguf_files_fail_with_one_line(tmp_path):
    with pytest.raises(OmniCoderError, match="does not exist"):
        load_model_and_tokenizer(f"gguf:{tmp_path / 'missing.gguf'}")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(OmniCoderError, match="no GGUF magic"):
        load_model_and_tokenizer(f"gguf:{tmp_path / 'junk.gguf'}")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(OmniCoderError, match="GGUF"):
        load_model_and_tokenizer(f"gguf:{tmp_path / 'cut.gguf'}")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_int4_export_keeps_the_files_blocks(gguf_files, family, tmp_path):
    """Q4_0 (llama) and Q4_1 (qwen2) projections and the Q8_0 tied head keep the file's exact grid: the bundle's
    quantized layers dequantize to the weights transformers reads from the file; for Q4_1 its logits are far closer
    to the dequantized model's than an int4 export that quantizes those weights again (for Q4_0 they are the same:
    re-quantizing a Q4_0 block gives back its grid)."""
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.quant import QuantLinear

    name = f"gguf:{gguf_files[family]}"
    reference, tokenizer = load_model_and_tokenizer(name)
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(ids, torch.arange(16)[None]).logits[0].numpy()
    errors = {}
    for transcode in (True, False):
        model, _ = load_model_and_tokenizer(name)
        options = OnnxExportOptions(weights="int4", transcode=transcode)
        manifest = export_onnx_bundle(model, tokenizer.to_json(), tmp_path / str(transcode), options)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        if transcode:  # every layer keeps its blocks (the tiny vocabulary keeps a float head)
            assert manifest["precision"]["kept_file_blocks"] == len(layers) == 14
            for layer_name in layers:
                weight = reference.get_submodule(layer_name).weight
                assert torch.allclose(layers[layer_name].dequantized_weight(), weight, rtol=1e-5, atol=1e-6)
            assert (layers["layers.0.attn.q_proj"].zero_points is not None) == (family == "qwen2")
        bundle = open_bundle(tmp_path / str(transcode))
        backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1)))
        backend.reset()
        got = backend.step_all(ids[0].tolist(), list(range(16)))
        errors[transcode] = float(np.abs(got - expected).max())
    if family == "llama":  # Q4_0 is round-to-nearest with the block's extreme at -8, as our quantizer: same grid
        assert errors[True] == pytest.approx(errors[False], rel=1e-3), errors
    else:  # Q4_1's minima are off any symmetric grid: re-quantizing loses what the transcode keeps
        assert errors[True] < errors[False] / 3, errors
