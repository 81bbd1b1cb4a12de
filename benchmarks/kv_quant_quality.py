"""Quality and memory of each stored KV format (`omnicoder-export --kv`), measured through the ONNX runner.

    python benchmarks/kv_quant_quality.py [--model default] [--max-bytes 0] [--part all|quality|memory]

quality: bits per byte on the held-out split (windows of the model's context, stride half of it) through ONNX
bundles with fp32 weights and KV stored as fp32 / fp16 / u8 / nf4 (each also with the Hadamard rotation), the
delta vs fp32 KV and the next-token argmax agreement. Plus a PyTorch simulation of the u8 alternatives the
graph does not ship: KIVI-style per-channel quantization along tokens (groups of 32 tokens, the newest
incomplete group kept in full precision) vs the shipped per-token groups.
memory: bytes per token per layer (the sidecar) and the KV bytes the runner really holds after 4096 tokens
(sum of the graph's present buffers) for MLA (the default model) and GQA (the random-100m shape), each exported
with --context 4096. Writes DIR/kv_quant.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_quality import evaluate  # noqa: E402

ONNX_VARIANTS = [
    ("fp32", {"kv": "fp32"}),
    ("fp16", {"kv": "fp16"}),
    ("u8", {"kv": "u8"}),
    ("u8+hadamard", {"kv": "u8", "kv_rotation": "hadamard"}),
    ("nf4", {"kv": "nf4"}),
    ("nf4+hadamard", {"kv": "nf4", "kv_rotation": "hadamard"}),
]
TOKEN_GROUP = 32  # KIVI: keys quantized per channel over groups of this many tokens


def fake_u8(x, axis: int):
    """Asymmetric 8-bit quantize-dequantize with min/max taken along `axis`."""
    lo, hi = x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)
    scale = ((hi - lo) / 255).clamp_min(1e-6)
    return (x - lo).div(scale).round().clamp(0, 255) * scale + lo


class SimulatedSlot:
    """A full-sequence `past` for the MLA layers that attends over fake-quantized latent rows."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def attend_latent(self, q, row, latent_dim: int, attention):
        import torch

        from omnicoder.kv_quant import KVQuantSpec, dequantize, quantize

        b, _, t, width = row.shape
        scale = attention.scale  # the layer's kv_slot.AttentionSpec (MLA: no window, no soft-cap)
        positions = torch.arange(t)
        causal = positions[None, :] <= positions[:, None]
        if self.mode == "per-token":  # what the graph ships: every row quantized, groups along the row
            spec = KVQuantSpec("u8")
            rows_q = dequantize(quantize(row, spec), spec, width)
            scores = (q @ rows_q.transpose(-1, -2)) * scale
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            return probs @ rows_q[..., :latent_dim], row
        # KIVI: per channel over complete groups of TOKEN_GROUP tokens; a query's own group stays exact
        groups = t // TOKEN_GROUP
        full = row[:, :, : groups * TOKEN_GROUP].reshape(b, 1, groups, TOKEN_GROUP, width)
        rows_q = torch.cat((fake_u8(full, 3).reshape(b, 1, -1, width), row[:, :, groups * TOKEN_GROUP :]), dim=2)
        older = (positions[None, :] // TOKEN_GROUP) < (positions[:, None] // TOKEN_GROUP)
        scores = torch.where(older, q @ rows_q.transpose(-1, -2), q @ row.transpose(-1, -2)) * scale
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        values = older.float()  # split the weights between quantized and exact rows
        out = (probs * values) @ rows_q[..., :latent_dim] + (probs * (1 - values)) @ row[..., :latent_dim]
        return out, row


class TorchBackend:
    """`full_logits` of the PyTorch model with a simulated KV format."""

    def __init__(self, model, mode: str) -> None:
        self.model, self.mode = model, mode

    def full_logits(self, ids: np.ndarray) -> np.ndarray:
        import torch

        slots = [SimulatedSlot(self.mode) for _ in range(self.model.config.n_layers)]
        positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        with torch.no_grad():
            return self.model(torch.from_numpy(ids), positions, slots, heads=False).logits.numpy()


def quality(args, tmp: Path) -> dict:
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.cli.evaluate import truncate
    from omnicoder.data import find_corpus, read_documents
    from omnicoder.loading import load_model_and_tokenizer

    docs = truncate(read_documents(find_corpus().heldout), args.max_bytes)
    backends = {}
    for name, options in ONNX_VARIANTS:
        model, tokenizer = load_model_and_tokenizer(args.model)
        out = tmp / name
        export_onnx_bundle(model, tokenizer.to_json(), out, OnnxExportOptions(weights="fp32", **options))
        bundle = open_bundle(out)
        backends[name] = GraphBackend(bundle, OnnxProgram(create_session(bundle, args.threads)))
    model, _ = load_model_and_tokenizer(args.model)
    if model.config.attention == "mla":
        backends["sim u8 per-token (torch)"] = TorchBackend(model.eval(), "per-token")
        backends["sim u8 KIVI per-channel (torch)"] = TorchBackend(model.eval(), "per-channel")
    info = bundle.model
    scores = evaluate(backends, docs, info["bos_id"], info["pad_id"], info["context_length"])
    base = scores["fp32"]["bits_per_byte"]
    rows = {}
    for name in backends:
        bpb = scores[name]["bits_per_byte"]
        rows[name] = {
            "bits_per_byte": round(bpb, 5),
            "delta_percent": round(100 * (bpb / base - 1), 3),
            "argmax_agreement": round(scores[name]["argmax_agreement"], 4),
        }
        row = rows[name]
        print(f"{name:32s} {bpb:.4f} bits/byte ({row['delta_percent']:+.2f}%)  agree {row['argmax_agreement']:.4f}")
    return {"held_out_bytes": scores["_bytes"], "files": len(docs), "rows": rows}


def memory(args, tmp: Path, tokens: int = 4096) -> dict:
    import torch
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.loading import load_model_and_tokenizer
    from omnicoder.long_context import extend_context
    from omnicoder.model import OmniCoder
    from omnicoder.presets import preset
    from omnicoder.tokenizer import ByteTokenizer

    result = {}
    ids = list(np.random.RandomState(0).randint(0, 256, tokens))
    for label, make in (
        ("MLA (omnicoder-tiny)", lambda: load_model_and_tokenizer(args.model)[0]),
        ("GQA (random-100m shape)", lambda: OmniCoder(preset("random-100m"))),
    ):
        for dtype in ("fp32", "fp16", "u8", "nf4"):
            torch.manual_seed(0)
            model = extend_context(make().eval(), tokens, "yarn")
            out = tmp / f"mem-{label[:3]}-{dtype}"
            export_onnx_bundle(model, ByteTokenizer().to_json(), out, OnnxExportOptions(weights="int4", kv=dtype))
            bundle = open_bundle(out)
            backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, args.threads)))
            started = time.perf_counter()
            for start in range(0, tokens, 512):
                backend.step(ids[start : start + 512], list(range(start, start + 512)))
            held = backend.cache.nbytes()
            per_layer = bundle.sidecar("kv_paging")["bytes_per_token_per_layer"]
            result.setdefault(label, {})[dtype] = {
                "bytes_per_token_per_layer": per_layer,
                "resident_kv_bytes_at_4k": held,
                "expected": per_layer * bundle.model["n_layers"] * tokens,
                "prefill_seconds": round(time.perf_counter() - started, 1),
            }
            print(f"{label:24s} {dtype:5s} {per_layer:6d} B/token/layer  resident at {tokens}: {held / 2**20:8.2f} MiB")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--max-bytes", type=int, default=0, help="score at most this many held-out bytes (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", default="all", choices=("all", "quality", "memory"))
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "kv_quant.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["model"] = args.model
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "quality"):
            result["quality"] = quality(args, Path(tmp))
        if args.part in ("all", "memory"):
            result["memory"] = memory(args, Path(tmp))
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
