"""Fused-op requirements of an ONNX bundle on one execution provider, checked against the op inventory of
the provider-optimized graph. Torch-free.

- fused attention: one `Attention` / `GroupQueryAttention` / `MultiHeadAttention` per decoder layer; required
  by default on mobile and GPU providers, configurable per profile and provider;
- quantized matmul: every quantized linear of a quantized bundle runs as `MatMulNBits` / `QLinearMatMul` /
  `DynamicQuantizeMatMul` / `MatMulIntegerToFloat` (int4 left as DequantizeLinear + MatMul fails);
- `QLinearMatMul` for every quantized linear when the profile says so or `OMNICODER_REQUIRE_QLINEAR=1`;
- any op listed in the profile's `required_ops`, at least once.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from omnicoder.runtimes.bench_result import Check

ATTENTION_OPS = ("Attention", "GroupQueryAttention", "MultiHeadAttention")
QUANTIZED_MATMUL_OPS = ("MatMulNBits", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
QUANTIZED_WEIGHTS = ("int4", "int8", "8da4w")
MOBILE_PROVIDERS = frozenset(f"{name}ExecutionProvider" for name in ("CoreML", "Nnapi", "Xnnpack", "QNN"))
GPU_PROVIDERS = frozenset(
    f"{name}ExecutionProvider" for name in ("CUDA", "Tensorrt", "ROCM", "MIGraphX", "Dml", "WebGpu")
)
REQUIRE_QLINEAR_ENV = "OMNICODER_REQUIRE_QLINEAR"


@dataclass
class OpPolicy:
    """Which fused ops a provider must show; see the module docstring."""

    fused_attention: bool
    quantized_matmul: bool = True
    qlinear_matmul: bool = False
    required_ops: list[str] = field(default_factory=list)

    @classmethod
    def for_provider(cls, provider: str, entry: dict | None) -> OpPolicy:
        """The policy from a profile's provider entry; unset fields take the provider-class defaults."""
        entry = entry or {}
        qlinear = entry.get("qlinear_matmul", False) or os.environ.get(REQUIRE_QLINEAR_ENV, "") == "1"
        return cls(
            fused_attention=entry.get("fused_attention", provider in MOBILE_PROVIDERS | GPU_PROVIDERS),
            quantized_matmul=entry.get("quantized_matmul", True),
            qlinear_matmul=qlinear,
            required_ops=list(entry.get("required_ops", [])),
        )


def breakdown(counts: Counter, ops: tuple[str, ...]) -> str:
    return ", ".join(f"{op} {counts[op]}" for op in ops if counts[op]) or "none"


def op_checks(provider: str, counts: Counter, manifest: dict, policy: OpPolicy) -> list[Check]:
    """The fused-op gates of one provider's inventory."""
    checks = []
    layers = manifest["model"]["n_layers"]
    weights = manifest["precision"]["weights"]
    quantized = weights in QUANTIZED_WEIGHTS
    merged = manifest.get("graph", {}).get("fusions", {}).get("merged_linears", 0)  # siblings share one kernel
    wanted = max((manifest["precision"].get("quantized_layers") or 0) - merged, 1)
    if policy.fused_attention:
        found = sum(counts[op] for op in ATTENTION_OPS)
        note = f"{breakdown(counts, ATTENTION_OPS)}; need one per layer ({layers})"
        if found < layers:
            note += f"; attention was not fused (Softmax {counts['Softmax']}, MatMul {counts['MatMul']})"
        checks.append(Check(provider, "fused attention ops", found, layers, note))
    if policy.quantized_matmul and quantized:
        found = sum(counts[op] for op in QUANTIZED_MATMUL_OPS)
        shared = f"; linears that share an input share one: {merged} merged" if merged else ""
        note = f"{breakdown(counts, QUANTIZED_MATMUL_OPS)}; need one per quantized linear ({wanted}, {weights}{shared})"
        if found < wanted and counts["DequantizeLinear"]:
            note += f"; {counts['DequantizeLinear']} DequantizeLinear left unfused"
        checks.append(Check(provider, "quantized matmul ops", found, wanted, note))
    if policy.qlinear_matmul:
        why = f"{REQUIRE_QLINEAR_ENV}=1" if os.environ.get(REQUIRE_QLINEAR_ENV, "") == "1" else "the profile"
        note = f"QLinearMatMul per quantized linear, required by {why}"
        if not quantized:
            note += f"; the bundle's weights are {weights}, not quantized"
        checks.append(Check(provider, "QLinearMatMul ops", counts["QLinearMatMul"], wanted, note))
    for op in policy.required_ops:
        checks.append(Check(provider, f"{op} ops", counts[op], 1, "required by the profile"))
    return checks
