"""MoE layers in the ONNX graph (issue #21): the routed experts as ONE onnxruntime node per layer,
com.microsoft.MoE (fp32 experts) or com.microsoft.QMoE (int4 blocks of 32); the routing stays the model's, in
standard ops (Gemm, Softmax / Sigmoid, TopK, GatherElements ...).

onnxruntime's CPU kernels route by softmax(router_probs) then top-k, optionally renormalised, so the graph feeds
them r = log(w) at the k experts our router chose (w their weights) and -inf elsewhere, with
normalize_routing_weights=1: the kernel weighs expert i by w_i / sum(w), and its output times sum(w) is
sum_i w_i expert_i(x), exact up to the fp32 rounding of exp(log w). So every routing the model has (softmax,
top-k softmax, sigmoid with a choice bias, groups, scale) runs through the kernel, and one node serves prefill
(each expert on its own tokens) and decode (only the k chosen experts read).

Why this lowering (benchmarks/moe_onnx_lowering.py: random-moe-100m's shapes with 3 layers, 2 of them MoE, 2
threads, times relative to this one in the same run): a decode step (past 128) gather 2.4x, dense 16.6x; a
128-token prefill gather 16.4x, dense 4.3x; int4 experts (QMoE) 0.69x / 0.88x. `--moe-lowering gather|dense`
keeps standard ops only (other execution providers); the CPU kernel's SwiGLU is silu(gate) * up, so gelu_tanh
experts use gather.

Expert layout: fc1 [E, 2H, d] with gate and up rows interleaved (swiglu_fusion=1, the only fused layout the CPU
kernel takes), fc2 [E, d, H] (down_proj as is). int4: omnicoder.quant.QuantExpertBank's codes as unsigned nibbles
(code + 8: the default zero point 8 gives back the signed grid), low nibble first, [E, N, K / 2] uint8, fp32
scales [E, N, K / 32].
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.errors import OmniCoderError
from omnicoder.module_swap import swapped_attributes, swapped_modules
from omnicoder.moe import MoEFeedForward, Routing
from omnicoder.quant import QuantExpertBank

LOWERINGS = ("auto", "ort", "gather", "dense")
NEG_LOG = -1e30  # log(0) of a zero routing weight, finite so that a row of zeros is still a softmax


def _experts(x: torch.Tensor, router: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor, k: int) -> torch.Tensor:
    """What com.microsoft.MoE computes: softmax top-k of `router`, renormalised, over SwiGLU experts."""
    weights, ids = torch.softmax(router, dim=-1).topk(k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    gate, up = fc1[:, 0::2][ids], fc1[:, 1::2][ids]  # [N, k, H, d]
    h = F.silu(torch.einsum("nd,nkhd->nkh", x, gate)) * torch.einsum("nd,nkhd->nkh", x, up)
    return (torch.einsum("nkh,nkdh->nkd", h, fc2[ids]) * weights.unsqueeze(-1)).sum(dim=1)


def _dequantize_packed(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[E, N, K / 2] uint8 nibbles (zero point 8) and [E, N, K / block] scales -> float [E, N, K]."""
    codes = torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2).float() - 8
    return (codes.unflatten(-1, (scales.shape[-1], -1)) * scales.unsqueeze(-1)).flatten(-2)


@torch.library.custom_op("omnicoder::moe_experts", mutates_args=())
def _moe_experts_op(
    x: torch.Tensor, router: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor, k: int
) -> torch.Tensor:
    return _experts(x, router, fc1, fc2, k)


@_moe_experts_op.register_fake
def _(x, router, fc1, fc2, k):
    return torch.empty_like(x)


@torch.library.custom_op("omnicoder::moe_experts_q4", mutates_args=())
def _moe_experts_q4_op(
    x: torch.Tensor,
    router: torch.Tensor,
    fc1: torch.Tensor,
    fc1_scales: torch.Tensor,
    fc2: torch.Tensor,
    fc2_scales: torch.Tensor,
    k: int,
    block: int,
) -> torch.Tensor:
    return _experts(x, router, _dequantize_packed(fc1, fc1_scales), _dequantize_packed(fc2, fc2_scales), k)


@_moe_experts_q4_op.register_fake
def _(x, router, fc1, fc1_scales, fc2, fc2_scales, k, block):
    return torch.empty_like(x)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Signed int4 codes [..., K] -> uint8 [..., K / 2]: code + 8, low nibble first."""
    unsigned = (codes.to(torch.int16) + 8).to(torch.uint8)
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)


def _interleave(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """[E, H, ...] gate and up -> [E, 2H, ...] with rows gate0, up0, gate1, up1, ..."""
    return torch.stack((gate, up), dim=2).flatten(1, 2).contiguous()


class MoEOpForm(MoEFeedForward):
    """An MoE layer whose routed experts are one `omnicoder::moe_experts(_q4)` node (the same router, shared expert
    and gate modules); swap it in with `as_moe_op_form` while tracing."""

    def __init__(self, layer: MoEFeedForward) -> None:
        nn.Module.__init__(self)
        self.router, self.shared, self.shared_gate = layer.router, layer.shared, layer.shared_gate
        self.form, self.aux_loss, self.expert_load = layer.form, None, None
        self.training = layer.training
        bank = layer.experts
        self.expert_count = bank.count
        self.quantized = isinstance(bank, QuantExpertBank)
        self.block = bank.block if self.quantized else 0
        if self.quantized:
            if bank.bits != 4:
                raise OmniCoderError(f"{bank.bits}-bit experts have no QMoE lowering here; use --weights int4")
            self.register_buffer("fc1", _pack_nibbles(_interleave(bank.gate_proj_codes, bank.up_proj_codes)))
            self.register_buffer("fc1_scales", _interleave(bank.gate_proj_scales, bank.up_proj_scales))
            self.register_buffer("fc2", _pack_nibbles(bank.down_proj_codes).contiguous())
            self.register_buffer("fc2_scales", bank.down_proj_scales.contiguous())
        else:
            self.register_buffer("fc1", _interleave(bank.gate_proj.detach(), bank.up_proj.detach()))
            self.register_buffer("fc2", bank.down_proj.detach().contiguous())

    def routed(self, x: torch.Tensor, routing: Routing, form: str = "auto") -> torch.Tensor:
        logw = routing.weights.log().clamp_min(NEG_LOG)
        router = x.new_full((x.shape[0], self.expert_count), float("-inf")).scatter(1, routing.ids, logw)
        k = routing.ids.shape[1]
        if self.quantized:
            q4 = torch.ops.omnicoder.moe_experts_q4
            out = q4(x, router, self.fc1, self.fc1_scales, self.fc2, self.fc2_scales, k, self.block)
        else:
            out = torch.ops.omnicoder.moe_experts(x, router, self.fc1, self.fc2, k)
        return out * routing.weights.sum(dim=-1, keepdim=True)


def as_moe_op_form(module: nn.Module) -> nn.Module | None:
    """module_swap replacement: an MoE layer's single-node form (None keeps every other module)."""
    return MoEOpForm(module) if type(module) is MoEFeedForward else None


def resolve_lowering(model: nn.Module, lowering: str) -> str | None:
    """The lowering used for `model`'s MoE layers ("ort", "gather" or "dense"); None for a model without them."""
    config = model.config
    if lowering not in LOWERINGS:
        raise OmniCoderError(f"--moe-lowering {lowering} is unknown; use one of {', '.join(LOWERINGS)}")
    if not config.moe_experts:
        return None
    silu = config.mlp_activation != "gelu_tanh"
    if lowering == "ort" and not silu:
        raise OmniCoderError(
            "--moe-lowering ort: onnxruntime's MoE kernel has no gelu_tanh experts; use --moe-lowering gather"
        )
    return ("ort" if silu else "gather") if lowering == "auto" else lowering


def prepare_moe(model: nn.Module, lowering: str | None) -> contextlib.AbstractContextManager:
    """Context for tracing: the op form swapped in ("ort"), or every MoE layer set to a standard-op form."""
    if lowering == "ort":
        return swapped_modules(model, as_moe_op_form)
    return swapped_attributes(model, MoEFeedForward, "form", lowering) if lowering else contextlib.nullcontext()


def moe_translations(accuracy_level: int) -> dict:
    """torch op -> onnxscript function for the two expert ops."""
    from omnicoder.export.onnx_graph import _schema
    from onnxscript import values

    types = [("T", ["tensor(float)"]), ("Q", ["tensor(uint8)"])]
    attributes = [
        ("k", "INT"),
        ("activation_type", "STRING"),
        ("swiglu_fusion", "INT"),
        ("normalize_routing_weights", "INT"),
        ("activation_alpha", "FLOAT"),
        ("activation_beta", "FLOAT"),
    ]
    moe = values.Op(
        values.Opset("com.microsoft", 1),
        "MoE",
        _schema(
            "MoE",
            "com.microsoft",
            [("input", "T"), ("router_probs", "T"), ("fc1", "T"), ("fc1_bias", "T", "optional"), ("fc2", "T")],
            [("output", "T")],
            types[:1],
            attributes,
        ),
    )
    qmoe = values.Op(
        values.Opset("com.microsoft", 1),
        "QMoE",
        _schema(
            "QMoE",
            "com.microsoft",
            [
                ("input", "T"),
                ("router_probs", "T"),
                ("fc1", "Q"),
                ("fc1_scales", "T"),
                ("fc1_bias", "T", "optional"),
                ("fc2", "Q"),
                ("fc2_scales", "T"),
            ],
            [("output", "T")],
            types,
            [*attributes, ("expert_weight_bits", "INT"), ("block_size", "INT"), ("accuracy_level", "INT")],
        ),
    )
    swiglu = dict(
        activation_type="swiglu",
        swiglu_fusion=1,
        normalize_routing_weights=1,
        activation_alpha=1.0,
        activation_beta=0.0,
    )

    def moe_experts(x, router, fc1, fc2, k: int):
        return moe(x, router, fc1, None, fc2, k=k, **swiglu)

    def moe_experts_q4(x, router, fc1, fc1_scales, fc2, fc2_scales, k: int, block: int):
        return qmoe(
            x,
            router,
            fc1,
            fc1_scales,
            None,
            fc2,
            fc2_scales,
            k=k,
            expert_weight_bits=4,
            block_size=block,
            accuracy_level=accuracy_level,
            **swiglu,
        )

    return {
        torch.ops.omnicoder.moe_experts.default: moe_experts,
        torch.ops.omnicoder.moe_experts_q4.default: moe_experts_q4,
    }


def moe_contract(proto, config, lowering: str, quantized: bool) -> dict:
    """The manifest's graph.moe: what a runtime needs to find and page the experts (call before external data).
    `tensors` (the initializers holding each layer's experts, expert-major) only for the onnxruntime lowering: the
    standard-op forms' weights are the converter's (renamed, possibly re-laid-out) constants."""
    from onnx.helper import tensor_dtype_to_np_dtype

    layers = [i for i in range(config.n_layers) if config.is_moe_layer(i)]
    experts, weights = config.moe_experts, 3 * config.moe_hidden * config.d_model
    contract = {
        "lowering": lowering,
        "layers": layers,
        "experts": experts,
        "top_k": config.moe_top_k,
        "expert_hidden": config.moe_hidden,
        "shared_hidden": config.moe_shared_hidden,
        "gating": config.moe_gating,
        "expert_weights": "int4" if quantized else "fp32",
        "block_size": 32 if quantized else None,
        # standard-op forms keep int8 codes (one a byte) and fp32 scales, or fp32 weights
        "bytes_per_expert": weights + weights // 32 * 4 if quantized else weights * 4,
    }
    if lowering != "ort":
        return contract
    op = "QMoE" if quantized else "MoE"
    nodes = [n for n in proto.graph.node if n.domain == "com.microsoft" and n.op_type == op]
    if len(nodes) != len(layers):
        raise OmniCoderError(f"internal: {len(layers)} MoE layers but {len(nodes)} {op} nodes in the graph")
    inits = {init.name: init for init in proto.graph.initializer}
    tensors, sizes = [], set()
    for node in nodes:
        found = [inits[name] for name in node.input if name in inits]
        owner = {int(m.group(1)) for t in found if (m := re.search(r"layers\.(\d+)\.mlp\.fc", t.name))}
        sizes.add(sum(int(np.prod(t.dims)) * tensor_dtype_to_np_dtype(t.data_type).itemsize for t in found))
        tensors.append({"layer": owner.pop() if len(owner) == 1 else -1, "initializers": [t.name for t in found]})
    tensors.sort(key=lambda t: t["layer"])
    if len(sizes) != 1 or [t["layer"] for t in tensors] != layers:
        raise OmniCoderError("internal: the MoE nodes' expert tensors do not match the MoE layers")
    contract.update(op=f"com.microsoft.{op}", bytes_per_expert=sizes.pop() // experts, tensors=tensors)
    return contract
