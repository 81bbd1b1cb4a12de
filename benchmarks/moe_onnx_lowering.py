"""Decode-step and prefill time of an MoE model's ONNX graph per MoE lowering (issue #21): com.microsoft.MoE
(`--moe-lowering ort`, the default), the standard-op gather and dense forms, and int4 experts (QMoE). The model has
random-moe-100m's layer shapes (MLA, d 512, 32 experts of 256, top-4 sigmoid routing, a shared expert) with fewer
layers (--layers, first one dense) and a byte vocabulary: the MoE layers' cost is what differs. Each graph runs
the same calls in interleaved rounds; times are reported as the best round and as ratios to `ort` in this run.

    python benchmarks/moe_onnx_lowering.py [--layers 3] [--threads 2] [--out docs/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "ort": ("fp32", "ort"),
    "gather": ("fp32", "gather"),
    "dense": ("fp32", "dense"),
    "ort-int4": ("int4", "ort"),
}


def build(layers: int):
    import torch

    from omnicoder.config import OmniCoderConfig
    from omnicoder.model import OmniCoder
    from omnicoder.presets import preset

    torch.manual_seed(0)
    config = OmniCoderConfig(**{**preset("random-moe-100m").to_dict(), "n_layers": layers, "name": "moe-bench"})
    return OmniCoder(config.validate()).eval()


def timed_calls(session, past_len: int, prefill: int, rounds: int, reps: int) -> dict[str, float]:
    """Best-round milliseconds of a decode step (one token after `past_len`) and of a `prefill`-token chunk."""
    kv = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    rng = np.random.default_rng(0)

    def feeds(tokens: int, past: int) -> dict:
        ids = rng.integers(0, 256, (1, tokens), dtype=np.int64)
        pos = np.arange(past, past + tokens, dtype=np.int64)[None]
        cache = {i.name: rng.standard_normal((1, i.shape[1], past, i.shape[3])).astype(np.float32) for i in kv}
        return {"input_ids": ids, "position_ids": pos, **cache}

    calls = {"decode_ms": feeds(1, past_len), "prefill_ms": feeds(prefill, 0)}
    best = {}
    for name, feed in calls.items():
        session.run(None, feed)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(reps if name == "decode_ms" else 1):
                session.run(None, feed)
            times.append((time.perf_counter() - start) / (reps if name == "decode_ms" else 1) * 1e3)
        best[name] = min(times)
    return best


def main() -> None:
    import onnxruntime as ort
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle

    from omnicoder.tokenizer import ByteTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = build(args.layers)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = args.threads, 3
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (weights, lowering) in VARIANTS.items():
            export = OnnxExportOptions(weights=weights, moe_lowering=lowering)
            export_onnx_bundle(copy.deepcopy(model), ByteTokenizer().to_json(), Path(tmp) / name, export)
            graph = str(Path(tmp) / name / "model.onnx")
            sessions[name] = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        results: dict[str, list[dict]] = {name: [] for name in sessions}
        for _ in range(2):  # interleaved: each variant measured twice, between the others
            for name, session in sessions.items():
                results[name].append(timed_calls(session, args.past, args.prefill, args.rounds, 10))
    best = {n: {k: min(r[k] for r in runs) for k in runs[0]} for n, runs in results.items()}
    report = {
        "model": f"random-moe-100m shapes, {args.layers} layers ({args.layers - 1} MoE)",
        "threads": args.threads,
        "past": args.past,
        "prefill": args.prefill,
        "ms": best,
        "ratio_to_ort": {n: {k: round(v / best["ort"][k], 2) for k, v in b.items()} for n, b in best.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_onnx_lowering.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
