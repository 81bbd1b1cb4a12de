"""A GGUF file's own 4-bit and 8-bit blocks as `QuantLinear` codes: the lossless transcode of `gguf:FILE` exports.

llama.cpp's Q4_0, Q4_1 and Q8_0 formats quantize each row in blocks of 32 input features, as our int4 does, so
an int4 / int8 export can keep the file's exact grid instead of quantizing the dequantized weights a second
time (which costs quality: the second rounding adds to the first):

- Q4_0 (fp16 d, 32 nibbles q): w = d * (q - 8) -> signed codes q - 8, scale d (our symmetric int4, exactly);
- Q4_1 (fp16 d, fp16 m, 32 nibbles q): w = d * q + m = d * (q - (-m / d)) -> unsigned codes q, scale d and a
  float zero point -m / d (MatMulNBits with float zero points);
- Q8_0 (fp16 d, 32 int8 q): w = d * q -> 8-bit codes in blocks of 32 (MatMulNBits bits=8), used for a tied LM
  head whose embedding the file stores as Q8_0.

K-quants (Q2_K..Q6_K: super-blocks of 256 with 6-bit sub-scales) have no such counterpart in ONNX Runtime's
kernels; they are dequantized on import and quantized again like full-precision weights.
"""

from __future__ import annotations

import numpy as np
import torch

from omnicoder.quant import PrequantizedBlocks

BLOCK = 32
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}


def _blocks(raw: np.ndarray, kind: str) -> np.ndarray:
    rows = raw.shape[0]
    return np.ascontiguousarray(raw).reshape(rows, -1, BLOCK_BYTES[kind])


def _half(blocks: np.ndarray, offset: int) -> np.ndarray:
    return blocks[..., offset : offset + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] codes: the low nibbles are elements 0-15, the high ones 16-31."""
    return np.concatenate((packed & 0x0F, packed >> 4), axis=-1).astype(np.int8)


def decode(kind: str, raw: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    """(bits, codes [N, K] int8, scales [N, K / 32], zero points or None) of one GGUF tensor's raw rows."""
    blocks = _blocks(raw, kind)
    n, count, _ = blocks.shape
    if kind == "q8_0":
        codes = blocks[..., 2:].copy().view(np.int8)
        return 8, codes.reshape(n, count * BLOCK), _half(blocks, 0), None
    scales = _half(blocks, 0)
    if kind == "q4_0":
        return 4, (_nibbles(blocks[..., 2:]) - 8).reshape(n, count * BLOCK), scales, None
    minimum = _half(blocks, 2)
    codes = _nibbles(blocks[..., 4:])
    flat = scales == 0  # every weight of the block equals m: code 1, scale m, zero point 0
    codes[flat] = 1
    zero_points = np.where(flat, 0.0, -minimum / np.where(flat, 1.0, scales)).astype(np.float32)
    return 4, codes.reshape(n, count * BLOCK), np.where(flat, minimum, scales), zero_points


def core_layer(hf_name: str) -> str | None:
    """The model core's layer name of a Hugging Face weight name (None: not a linear layer of the core)."""
    name = hf_name.removeprefix("model.").removesuffix(".weight")
    if name == "lm_head":
        return name
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "layers" and parts[2] in ("self_attn", "mlp"):
        return f"layers.{parts[1]}.{'attn' if parts[2] == 'self_attn' else 'mlp'}.{parts[3]}"
    return None


def prequantized_layers(blocks: dict[str, tuple[str, np.ndarray]], bits: int, tied: bool) -> PrequantizedBlocks:
    """The layers whose file blocks an export with `bits`-bit weights keeps (see the module docstring)."""
    out: PrequantizedBlocks = {}
    sources = dict(blocks)
    if tied and "model.embed_tokens.weight" in sources:
        sources.setdefault("lm_head.weight", sources["model.embed_tokens.weight"])
    for hf_name, (kind, raw) in sources.items():
        layer = core_layer(hf_name)
        if layer is None:
            continue
        if (bits == 4 and kind in ("q4_0", "q4_1")) or (layer == "lm_head" and kind == "q8_0"):
            got_bits, codes, scales, zeros = decode(kind, raw)
            zp = None if zeros is None else torch.from_numpy(zeros)
            out[layer] = (got_bits, BLOCK, torch.from_numpy(codes), torch.from_numpy(scales), zp)
    return out
