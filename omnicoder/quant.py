"""Weight quantization in the model core: `QuantLinear` and the pass that swaps it in.

Schemes (symmetric, no zero point):
- int4: codes in [-8, 7], one fp32 scale per block of 32 input features, round to nearest with the block's
  signed extreme at -8 (no clipping: clipping outliers to lower the squared error cost real models quality).
- int8: codes in [-127, 127], one scale per output channel (the whole row is one block).

The rounding happens once, here; every exporter lowers the same codes and scales, so the quality
delta measured in PyTorch is the one the targets ship.
"""

from __future__ import annotations

import torch
from torch import nn

from omnicoder import ops
from omnicoder.moe import ExpertBank

SCHEMES = {"int4": (4, 32), "int8": (8, 0)}
EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def quantize_weight(weight: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [N, K] weights -> (int8 codes [N, K], fp32 scales [N, K / block]); block 0 means per row.

    Round to nearest with each block's signed extreme mapped to the most negative code (-8 for 4 bits): the full
    [-8, 7] range and no clipping, as onnxruntime's MLAS quantizer does (and a GGUF Q4_0 block is, so re-quantizing
    one gives back its grid). A search over clipping ratios for the smallest squared error, used before, clipped
    outliers and cost a real model far more (SmolLM2-135M: +21.9% bits/byte against +12.4%, docs/benchmarks.md)."""
    w = weight.detach().float()
    n, k = w.shape
    block = block or k
    if k % block:
        raise ValueError(f"in_features {k} is not a multiple of the block size {block}")
    lowest = -(2 ** (bits - 1))
    blocks = w.view(n, k // block, block)
    extreme = torch.gather(blocks, -1, blocks.abs().argmax(dim=-1, keepdim=True))
    scale = extreme / lowest
    scale = torch.where(scale == 0, torch.full_like(scale, 1e-12), scale)
    codes = torch.clamp(torch.round(blocks / scale), lowest, -lowest - 1).to(torch.int8)
    return codes.view(n, k), scale.squeeze(-1)


def quantize_weight_asym(weight: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, ...]:
    """Asymmetric blocks: [N, K] -> (unsigned codes int8 [N, K] in [0, 2^bits - 1], fp32 scales and integer zero
    points [N, K / block]; w ~ (code - zero) * scale), each block's [min, max] range (with 0 in it) unclipped; the
    integer zero point packs in `bits` bits. SmolLM2-135M: +14.9% bits/byte, the symmetric form +12.4%."""
    w = weight.detach().float()
    n, k = w.shape
    if k % block:
        raise ValueError(f"in_features {k} is not a multiple of the block size {block}")
    qmax = 2**bits - 1
    blocks = w.view(n, k // block, block)
    low, high = blocks.amin(dim=-1, keepdim=True).clamp_max(0), blocks.amax(dim=-1, keepdim=True).clamp_min(0)
    scale = ((high - low) / qmax).clamp_min(1e-12)
    zero = torch.clamp(torch.round(-low / scale), 0, qmax)
    codes = torch.clamp(torch.round(blocks / scale) + zero, 0, qmax).to(torch.int8)
    return codes.view(n, k), scale.squeeze(-1), zero.squeeze(-1)


class QuantLinear(nn.Module):
    """A linear layer with quantized weights; its forward is the `ops.quant_linear` reference math (exporters swap
    in `QuantLinearOp`, the same layer as one graph node).

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


class QuantLinearOp(QuantLinear):
    """The same layer (the very tensors) as one `omnicoder::quant_linear` / `quant_linear_zp` node, which
    `torch.export` keeps whole for an exporter to translate; swap it in with `as_op_form` (module_swap)."""

    def __init__(self, layer: QuantLinear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.bits, self.block = layer.bits, layer.block
        for name in ("qweight", "scales", "zero_points"):
            self.register_buffer(name, getattr(layer, name))
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.zero_points is None:
            y = torch.ops.omnicoder.quant_linear(x, self.qweight, self.scales, self.bits)
        else:
            y = torch.ops.omnicoder.quant_linear_zp(x, self.qweight, self.scales, self.zero_points, self.bits)
        return y if self.bias is None else y + self.bias


def as_op_form(module: nn.Module) -> nn.Module | None:
    """module_swap replacement: a QuantLinear's single-node form (None keeps every other module)."""
    return QuantLinearOp(module) if type(module) is QuantLinear else None


PrequantizedBlocks = dict[str, tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]]


def quantize_linears(
    model: nn.Module,
    scheme: str,
    skip: tuple[str, ...] = ("lm_head", "retention_head"),
    asymmetric: bool = False,
    prequantized: PrequantizedBlocks | None = None,
) -> list[str]:
    """Replace every nn.Linear (except those named in `skip` and those the block does not divide) in place.

    Returns the names of the replaced layers; one-output linears (gates) stay float. The embedding and the (tied)
    LM head stay float: for a byte vocabulary they are a few percent of the weights, and the LM head is the most
    sensitive layer.
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
            if child.out_features == 1:  # a scalar gate (an MoE shared-expert gate): too small to gain, kept exact
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


class QuantExpertBank(nn.Module):
    """An MoE layer's routed experts (`omnicoder.moe.ExpertBank`) with quantized weights: per expert the same
    blocks as `QuantLinear` (`quantize_weight`, blocks along the input features). Codes int8 `{name}_codes`
    [E, out, in] and fp32 `{name}_scales` [E, out, in / block] for gate_proj / up_proj / down_proj; the float
    weights it reads back (`gate_proj` ...) are the dequantized blocks, so ExpertBank's forms compute with them."""

    gathered = ExpertBank.gathered
    all_experts = ExpertBank.all_experts
    expert = ExpertBank.expert

    def __init__(self, bank: ExpertBank, bits: int, block: int) -> None:
        super().__init__()
        self.activation, self.bits, self.block = bank.activation, bits, block
        for name in EXPERT_WEIGHTS:
            weight = getattr(bank, name).detach()
            e, n, k = weight.shape
            codes, scales = quantize_weight(weight.reshape(e * n, k), bits, block)
            self.register_buffer(f"{name}_codes", codes.view(e, n, k))
            self.register_buffer(f"{name}_scales", scales.view(e, n, k // block))

    def dequantized(self, name: str) -> torch.Tensor:
        """The float weights [E, out, in] of `name` (gate_proj, up_proj or down_proj)."""
        codes, scales = getattr(self, f"{name}_codes"), getattr(self, f"{name}_scales")
        blocks = codes.float().unflatten(-1, (scales.shape[-1], -1)) * scales.unsqueeze(-1)
        return blocks.flatten(-2)

    @property
    def count(self) -> int:
        return self.gate_proj_codes.shape[0]

    @property
    def gate_proj(self) -> torch.Tensor:
        return self.dequantized("gate_proj")

    @property
    def up_proj(self) -> torch.Tensor:
        return self.dequantized("up_proj")

    @property
    def down_proj(self) -> torch.Tensor:
        return self.dequantized("down_proj")

    def extra_repr(self) -> str:
        return f"experts={self.count}, bits={self.bits}, block={self.block}"


def quantize_experts(model: nn.Module, scheme: str = "int4") -> list[str]:
    """Replace every MoE layer's ExpertBank with a QuantExpertBank in place (the router stays float); returns the
    names of the replaced banks. Only block schemes (int4): a bank whose widths the block does not divide stays."""
    bits, block = SCHEMES[scheme]
    if not block:
        raise ValueError(f"expert quantization needs a block scheme, not {scheme!r}")
    replaced = []
    for name, module in list(model.named_modules()):
        bank = getattr(module, "experts", None)
        if type(bank) is ExpertBank and not (bank.gate_proj.shape[-1] % block or bank.down_proj.shape[-1] % block):
            module.experts = QuantExpertBank(bank, bits, block)
            replaced.append(f"{name}.experts" if name else "experts")
    return replaced
