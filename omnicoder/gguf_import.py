"""Import a GGUF file (llama.cpp's format) into the model core: `--model gguf:FILE`.

The hyper-parameters and the tokenizer come from the file's metadata through transformers' GGUF integration
(`load_gguf_checkpoint` without tensors, `convert_gguf_tokenizer`: the same mapping transformers' own GGUF loading
uses), so a GGUF file becomes the Hugging Face config of `omnicoder.hf_import` and follows its validation. The
tensors are read with the `gguf` package (memory-mapped) and dequantized to float32 with its numpy kernels: every
type `gguf.quants` implements (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q8_K, IQ*).
llama.cpp stores the q/k projections of `llama`-architecture files with their rows interleaved for its RoPE;
they are put back in Hugging Face order here (as transformers does).

Blocks of 32 that are already 4-bit (Q4_0, Q4_1) or 8-bit (Q8_0) are kept too (`GGUFModel.blocks`), so an int4 /
int8 export can reuse the file's exact grid instead of quantizing the dequantized weights again (see
`omnicoder.gguf_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.tokenizer import HFTokenizer

GGUF_PREFIX = "gguf:"
PERMUTED_ARCHITECTURES = ("llama", "mistral")  # q/k rows interleaved by llama.cpp's converter
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
SKIPPED = ("rope_freqs.weight",)  # llama3 RoPE factors: recomputed from the config's rope_scaling


def is_gguf_name(name: str | Path) -> bool:
    return str(name).startswith(GGUF_PREFIX)


def gguf_file(name: str | Path) -> Path:
    """`gguf:FILE` -> an existing file that starts with the GGUF magic; a one-line error otherwise."""
    path = Path(str(name).removeprefix(GGUF_PREFIX))
    if not path.is_file():
        raise OmniCoderError(f"GGUF file {path} does not exist; pass --model gguf:FILE")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise OmniCoderError(f"{path} is not a GGUF file (no GGUF magic); pass a llama.cpp .gguf model")
    return path


@dataclass
class GGUFModel:
    """What a GGUF file holds, in Hugging Face terms."""

    config: dict[str, Any]  # a config.json dict
    tensors: dict[str, torch.Tensor]  # HF names -> float32
    tokenizer_json: str
    add_bos: bool
    chat_template: str | None
    stop_ids: list[int]  # EOS, end of turn (tokenizer.ggml.eot_token_id) and EOM ids
    blocks: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # HF name -> (type, raw rows)


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise OmniCoderError("gguf: import needs the gguf package; pip install 'omnicoder[hf]'") from None
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise OmniCoderError(f"{path} is not a readable GGUF file ({exc}); re-download it") from None


def _metadata(reader, key: str, default: Any = None) -> Any:
    found = reader.fields.get(key)
    return default if found is None else found.contents()


def _hf_config(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config.json dict, tokenizer dict, tokenizer_config dict) from the metadata, as transformers maps them."""
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError:
        raise OmniCoderError("gguf: import needs transformers; pip install 'omnicoder[hf]'") from None
    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise OmniCoderError(f"{path}: transformers cannot map this GGUF file's metadata ({exc})") from None
    return parsed["config"], parsed["tokenizer"], parsed["tokenizer_config"]


def _tokenizer_json(architecture: str, tokenizer: dict[str, Any], path: Path) -> str:
    from transformers.integrations.ggml import convert_gguf_tokenizer

    try:
        fast, _ = convert_gguf_tokenizer(architecture, tokenizer)
    except (KeyError, ValueError, NotImplementedError) as exc:
        raise OmniCoderError(f"{path}: the GGUF tokenizer cannot be converted ({exc})") from None
    return fast.to_str()


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row interleaving (per head: pairs (i, i + d/2) stored side by side)."""
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor (None: skipped), or a one-line error for an unknown one."""
    if gguf_name in SKIPPED:
        return None
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    raise OmniCoderError(f"GGUF tensor {gguf_name} has no counterpart in the model core; this layout is not supported")


def _heads_of(name: str, config: dict[str, Any]) -> int | None:
    if name.endswith("self_attn.q_proj.weight"):
        return int(config["num_attention_heads"])
    if name.endswith("self_attn.k_proj.weight"):
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def read_gguf(path: Path) -> GGUFModel:
    """Metadata, tokenizer and tensors of a GGUF file (see the module docstring)."""
    from gguf import GGMLQuantizationType, quants
    from tqdm import tqdm

    config, tokenizer, tokenizer_config = _hf_config(path)
    reader = _reader(path)
    architecture = str(_metadata(reader, "general.architecture", config.get("model_type", "")))
    config.setdefault("architectures", [])
    key_length = _metadata(reader, f"{architecture}.attention.key_length")
    if key_length:  # transformers' mapping drops it; Qwen3 and Gemma heads are not hidden / heads wide
        config["head_dim"] = int(key_length)
    permuted = architecture in PERMUTED_ARCHITECTURES
    keep = {GGMLQuantizationType.Q4_0: "q4_0", GGMLQuantizationType.Q4_1: "q4_1", GGMLQuantizationType.Q8_0: "q8_0"}
    tensors: dict[str, torch.Tensor] = {}
    blocks: dict[str, tuple[str, np.ndarray]] = {}
    for tensor in tqdm(reader.tensors, desc="read gguf", unit="tensor", leave=False):
        name = hf_name(tensor.name)
        if name is None:
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        try:
            values = quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        except NotImplementedError:
            raise OmniCoderError(
                f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf package cannot dequantize"
            ) from None
        raw = np.asarray(tensor.data)
        heads = _heads_of(name, config) if permuted else None
        if heads:
            values = unpermute(values, heads)
            raw = unpermute(raw, heads)
        if tensor.tensor_type in keep and len(shape) == 2:
            blocks[name] = (keep[tensor.tensor_type], raw)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(values))
    if "lm_head.weight" not in tensors:
        config["tie_word_embeddings"] = True
    return GGUFModel(
        config=config,
        tensors=tensors,
        tokenizer_json=_tokenizer_json(config["model_type"], tokenizer, path),
        add_bos=bool(_metadata(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=tokenizer_config.get("chat_template"),
        stop_ids=[
            int(value)
            for key in ("eos_token_id", "eot_token_id", "eom_token_id")
            if (value := _metadata(reader, f"tokenizer.ggml.{key}")) is not None
        ],
        blocks=blocks,
    )


def load_gguf_model_and_tokenizer(name: str | Path) -> tuple[OmniCoder, HFTokenizer]:
    """`gguf:FILE` -> (model, tokenizer); the model carries the file's quantized blocks as `gguf_blocks`."""
    from omnicoder.hf_import import config_from_hf, model_from_state

    path = gguf_file(name)
    gguf = read_gguf(path)
    config = config_from_hf(gguf.config, name=f"gguf-{path.stem}")
    model = model_from_state(config, gguf.tensors, str(path))
    model.gguf_blocks = gguf.blocks
    tokenizer = HFTokenizer(
        gguf.tokenizer_json,
        bos_id=config.bos_id,
        eos_id=config.eos_id,
        add_bos=gguf.add_bos,
        stop_ids=gguf.stop_ids,
        chat_template=gguf.chat_template,
    )
    return model, tokenizer
