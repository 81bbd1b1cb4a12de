"""Resident KV bytes of a Gemma-3-shaped model at a long context: sliding-window layers held as windows vs a cache
holding the whole context (issue #20). The model has Gemma 3 1B's KV geometry (26 layers, 5 local : 1 global,
window 512, 1 KV head of width 256) with a tiny hidden size and random weights: KV bytes depend on that geometry
only. It is built with transformers, imported through `hf:`, exported to fp32 ONNX, and prefilled with CONTEXT
tokens (in chunks) by the torch-free runner, once with the windowed cache the runner picks for such a bundle and
once with a full-context cache; the last logits must agree.

    python benchmarks/sliding_kv_memory.py [--context 8192] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build_gemma3(out: Path, context: int) -> None:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        sliding_window_pattern=6,
        max_position_embeddings=context,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        query_pre_attn_scalar=256,
    )
    Gemma3ForCausalLM(config).eval().save_pretrained(out)


def prefill(backend, ids: list[int], chunk: int) -> np.ndarray:
    logits = None
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        logits = backend.step(part, list(range(start, start + len(part))))
    return logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_cache import ContiguousKVCache
    from omnicoder.runtimes.kv_window import SLACK, WindowedKVCache
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.hf_import import model_from_hf
    from omnicoder.tokenizer import ByteTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, bundle_dir = Path(tmp) / "hf", Path(tmp) / "bundle"
        build_gemma3(hf_dir, args.context)
        model = model_from_hf(hf_dir)
        export_onnx_bundle(model, ByteTokenizer().to_json(), bundle_dir, OnnxExportOptions(weights="fp32"))
        bundle = open_bundle(bundle_dir)
        ids = [int(t) for t in np.random.default_rng(0).integers(0, 512, args.context)]
        results = {}
        for kind in ("windowed", "full"):
            backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, 2)))
            assert isinstance(backend.cache, WindowedKVCache)
            if kind == "full":
                backend.cache = ContiguousKVCache(backend.layout)
            start = time.perf_counter()
            logits = prefill(backend, ids, args.chunk)
            results[kind] = {
                "kv_bytes": backend.cache.nbytes(),
                "prefill_seconds": round(time.perf_counter() - start, 2),
                "logits": logits,
            }
        layout = backend.layout
    diff = float(np.abs(results["windowed"].pop("logits") - results["full"].pop("logits")).max())
    report = {
        "command": f"python benchmarks/sliding_kv_memory.py --context {args.context}",
        "geometry": "Gemma 3 1B KV: 26 layers (22 sliding, window 512; 4 global), 1 KV head x 256, fp32 KV",
        "context": args.context,
        "windows": layout.windows,
        "slack": SLACK,
        "windowed": results["windowed"],
        "full": results["full"],
        "predicted_windowed_bytes": layout.resident_bytes(args.context, SLACK),
        "predicted_full_bytes": args.context * layout.bytes_per_token(),
        "ratio": round(results["full"]["kv_bytes"] / results["windowed"]["kv_bytes"], 2),
        "max_logit_diff": diff,
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out) / "sliding_kv_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
