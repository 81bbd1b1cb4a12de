"""Weight quantization in the model core: `QuantLinear` and the pass that swaps it in.

Schemes (symmetric, no zero point):
- int4: codes in [-8, 7], one fp32 scale per block of 32 input features. The scale of each block is
  chosen from a small grid of clipping ratios to minimise the block's squared error (a cheap form of
  the clipping search used by llama.cpp / AWQ), which matters for tiny models.
- int8: codes in [-127, 127], one scale per output channel (the whole row is one block).

The rounding happens once, here; every exporter lowers the same codes and scales, so the quality
delta measured in PyTorch is the one the targets ship.
"""

from __future__ import annotations

import torch
from torch import nn

from omnicoder import ops

SCHEMES = {"int4": (4, 32), "int8": (8, 0)}
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def quantize_weight(weight: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [N, K] weights -> (int8 codes [N, K], fp32 scales [N, K / block]); block 0 means per row."""
    w = weight.detach().float()
    n, k = w.shape
    block = block or k
    if k % block:
        raise ValueError(f"in_features {k} is not a multiple of the block size {block}")
    qmax = 2 ** (bits - 1) - 1
    blocks = w.view(n, k // block, block)
    absmax = blocks.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    best_err = torch.full_like(absmax, float("inf"))
    best_scale = absmax / qmax
    for ratio in CLIP_GRID:
        scale = absmax * ratio / qmax
        codes = torch.clamp(torch.round(blocks / scale), -qmax - 1, qmax)
        err = ((codes * scale - blocks) ** 2).sum(dim=-1, keepdim=True)
        better = err < best_err
        best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    codes = torch.clamp(torch.round(blocks / best_scale), -qmax - 1, qmax).to(torch.int8)
    return codes.view(n, k), best_scale.squeeze(-1)


def quantize_weight_asym(weight: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, ...]:
    """Asymmetric blocks: [N, K] -> (unsigned codes int8 [N, K] in [0, 2^bits - 1], fp32 scales and integer zero
    points [N, K / block]; w ~ (code - zero) * scale). Each block's range [min, max] is searched over shrunken
    ranges (CLIP_GRID, both ends) for the smallest squared error; the integer zero point packs in `bits` bits."""
    w = weight.detach().float()
    n, k = w.shape
    if k % block:
        raise ValueError(f"in_features {k} is not a multiple of the block size {block}")
    qmax = 2**bits - 1
    blocks = w.view(n, k // block, block)
    low, high = blocks.amin(dim=-1, keepdim=True).clamp_max(0), blocks.amax(dim=-1, keepdim=True).clamp_min(0)
    best = (torch.full_like(low, float("inf")), None, None)
    for lo_ratio in CLIP_GRID:
        for hi_ratio in CLIP_GRID:
            scale = ((high * hi_ratio - low * lo_ratio) / qmax).clamp_min(1e-12)
            zero = torch.clamp(torch.round(-low * lo_ratio / scale), 0, qmax)
            codes = torch.clamp(torch.round(blocks / scale) + zero, 0, qmax)
            err = (((codes - zero) * scale - blocks) ** 2).sum(dim=-1, keepdim=True)
            better = err < best[0]
            best = (
                torch.where(better, err, best[0]),
                scale if best[1] is None else torch.where(better, scale, best[1]),
                zero if best[2] is None else torch.where(better, zero, best[2]),
            )
    _, scale, zero = best
    codes = torch.clamp(torch.round(blocks / scale) + zero, 0, qmax).to(torch.int8)
    return codes.view(n, k), scale.squeeze(-1), zero.squeeze(-1)


class QuantLinear(nn.Module):
    """A linear layer with quantized weights; its forward is the `ops.quant_linear` boundary.

    Symmetric (signed codes, `zero_points` None) unless built with zero points: then the codes are unsigned and
    w = (code - zero_point) * scale per block (asymmetric int4, or a GGUF Q4_1 block kept exactly)."""

    def __init__(
        self,
        linear: nn.Linear,
        bits: int,
        block: int,
        codes: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
        zero_points: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = bits
        self.block = block or linear.in_features
        if codes is None or scales is None:
            codes, scales = quantize_weight(linear.weight, bits, block)
        self.register_buffer("qweight", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("zero_points", zero_points)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.quant_linear(x, self.qweight, self.scales, self.bias, self.bits, self.zero_points)

    def dequantized_weight(self) -> torch.Tensor:
        return ops.dequantize(self.qweight, self.scales, self.zero_points)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, block={self.block}"


PrequantizedBlocks = dict[str, tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]]


def quantize_linears(
    model: nn.Module,
    scheme: str,
    skip: tuple[str, ...] = ("lm_head", "retention_head"),
    asymmetric: bool = False,
    prequantized: PrequantizedBlocks | None = None,
) -> list[str]:
    """Replace every nn.Linear (except those named in `skip` and those the block does not divide) in place.

    Returns the names of the replaced layers. The embedding and the (tied) LM head stay float: for a
    byte vocabulary they are a few percent of the weights, and the LM head is the most sensitive layer.
    `asymmetric` uses zero points for int4 (`quantize_weight_asym`); `prequantized` maps a layer name to
    (bits, block, codes, scales, zero points) that are kept as they are (a GGUF file's own blocks).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    bits, block = SCHEMES[scheme]
    prequantized = prequantized or {}
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, nn.Linear) or any(full.split(".")[0] == s for s in skip):
                continue
            if full in prequantized:
                setattr(module, child_name, QuantLinear(child, *prequantized[full]))
            elif block and child.in_features % block:
                continue
            elif asymmetric and bits == 4:
                setattr(
                    module, child_name, QuantLinear(child, bits, block, *quantize_weight_asym(child.weight, 4, block))
                )
            else:
                setattr(module, child_name, QuantLinear(child, bits, block))
            replaced.append(full)
    return replaced
