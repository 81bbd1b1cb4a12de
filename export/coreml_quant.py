"""Core ML `--weights int4`: which layers keep which codes, the LM head and the embedding included.

- Every nn.Linear of the blocks and MTP heads: int4 in blocks of 32 (`omnicoder.quant`), or, for a `gguf:` model, the
  file's own Q4_0 / Q4_1 blocks (a lossless transcode: Q4_1's float zero point becomes an fp16 offset).
- The LM head, for a subword vocabulary (> QUANTIZED_HEAD_MIN_VOCAB; it is then most of the bytes read per token):
  the file's own Q8_0 / Q4_x blocks where the GGUF has them (a tied head: the embedding's), else int4 blocks of 32.
- The embedding: a tied one gathers rows of the head's codes (one constexpr in the package, read by `linear` and
  `gather`); an untied one gets its own codes, in the head's scheme. Byte vocabularies keep both in fp16.
- RoPE tables, norms, MLA's einsum weights and the retention head stay fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnicoder.quant import QuantLinear, quantize_linears, quantize_weight

QUANTIZED_HEAD_MIN_VOCAB = 1024
BLOCK = 32


@dataclass
class CoreMLQuantResult:
    """What `quantize_for_coreml` did, in the words of the manifest's precision section."""

    layers: int
    file_blocks: int
    lm_head: str
    embedding: str


def head_quantized(vocab_size: int, requested: bool | None) -> bool:
    """Quantize the LM head (and embedding)? `requested` None: only above QUANTIZED_HEAD_MIN_VOCAB."""
    return requested if requested is not None else vocab_size > QUANTIZED_HEAD_MIN_VOCAB


def _file_blocks(model, transcode: bool) -> dict:
    blocks = getattr(model, "gguf_blocks", None)
    if not (transcode and blocks):
        return {}
    from omnicoder.gguf_blocks import prequantized_layers

    return prequantized_layers(blocks, 4, model.config.tie_embeddings)


def _describe(bits: int, zero_points: torch.Tensor | None, from_file: bool) -> str:
    kind = f"int{bits}" if zero_points is None else f"uint{bits} with fp16 offsets"
    source = "the GGUF file's own blocks" if from_file else "omnicoder.quant"
    return f"{kind}, blocks of {BLOCK} ({source})"


def _untied_embedding_codes(model, kept: dict) -> tuple:
    """(bits, codes, scales, zero points, from the file) for an untied embedding."""
    blocks = getattr(model, "gguf_blocks", None) or {}
    if kept and "model.embed_tokens.weight" in blocks:
        from omnicoder.gguf_blocks import decode

        kind, raw = blocks["model.embed_tokens.weight"]
        if kind in ("q4_0", "q4_1", "q8_0"):
            bits, codes, scales, zeros = decode(kind, raw)
            zp = None if zeros is None else torch.from_numpy(zeros)
            return bits, torch.from_numpy(codes), torch.from_numpy(scales), zp, True
    codes, scales = quantize_weight(model.embed.weight, 4, BLOCK)
    return 4, codes, scales, None, False


def quantize_for_coreml(model, quantize_head: bool | None = None, transcode: bool = True) -> CoreMLQuantResult:
    """Swap the model's linears (and, for a subword vocabulary, the LM head and embedding) for quantized ones, in
    place; the model then computes exactly what the package stores (fp16 rounding of scales aside)."""
    from omnicoder.export.coreml_ops import QuantEmbedding

    config = model.config
    with_head = head_quantized(config.vocab_size, quantize_head) and config.d_model % BLOCK == 0
    kept = _file_blocks(model, transcode)
    skip = ("retention_head",) if with_head else ("lm_head", "retention_head")
    replaced = quantize_linears(model, "int4", skip=skip, prequantized=kept)
    from_file = sum(name in kept for name in replaced)
    if not with_head:
        tied = " (tied to the embedding)" if config.tie_embeddings else ""
        return CoreMLQuantResult(len(replaced), from_file, f"fp16{tied}", "fp16")
    head: QuantLinear = model.lm_head
    head_text = _describe(head.bits, head.zero_points, "lm_head" in kept)
    if config.tie_embeddings:
        model.embed = QuantEmbedding(head.qweight, head.scales, head.zero_points, head.bits)
        embedding = f"{head_text}: the LM head's codes (one constexpr read by gather and linear)"
    else:
        bits, codes, scales, zeros, embed_from_file = _untied_embedding_codes(model, kept)
        model.embed = QuantEmbedding(codes, scales, zeros, bits)
        embedding = _describe(bits, zeros, embed_from_file)
    return CoreMLQuantResult(len(replaced), from_file, head_text, embedding)
