"""Learned retention vs StreamingLLM vs H2O vs full KV at 25% and 50% KV budgets, through the ONNX runner.

    python benchmarks/retention_quality.py [--max-bytes 40000] [--recent 0] [--sinks 4] [--out docs/results]

Held-out code is cut into segments of the model's context (512 tokens incl. BOS); each segment is scored as one
sequence through the runner's RetentionKVCache (8 tokens per call), so every token sees at most the budget of
earlier tokens, at their true positions. Budgets are fractions of the full-context fp32 KV bytes. Writes
DIR/retention.json and DIR/retention.png.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = [  # (label, policy, how the learned policy stores "compress" tokens)
    ("StreamingLLM (sinks + recent)", "streaming", "none"),
    ("H2O (accumulated attention)", "h2o", "none"),
    ("learned, evict only", "learned", "none"),
    ("learned + NF4 compress", "learned", "nf4"),
]


def segments(docs: list[bytes], bos: int, length: int) -> list[list[int]]:
    out = []
    for doc in docs:
        for start in range(0, len(doc), length - 1):
            piece = list(doc[start : start + length - 1])
            if len(piece) > 16:
                out.append([bos, *piece])
    return out


def score(backend, segs: list[list[int]]) -> float:
    from omnicoder.runtimes.scoring import log_softmax
    from tqdm import tqdm

    nats, count = 0.0, 0
    for seg in tqdm(segs, desc="segments", leave=False):
        backend.reset()
        logp = log_softmax(backend.step_all(seg[:-1], list(range(len(seg) - 1))))
        targets = np.asarray(seg[1:])
        nats -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return nats / math.log(2) / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--max-bytes", type=int, default=40000)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--recent", type=int, default=0, help="recent window (0: 3/4 of the tokens the budget holds)")
    p.add_argument("--budgets", default="0.25,0.5")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_retention import RetentionPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.cli.evaluate import truncate
    from omnicoder.data import find_corpus, read_documents
    from omnicoder.loading import load_model_and_tokenizer

    docs = truncate(read_documents(find_corpus().heldout), args.max_bytes)
    model, tokenizer = load_model_and_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        options = OnnxExportOptions(weights="fp32", query_outputs=True)  # H2O scores with the query outputs
        export_onnx_bundle(model, tokenizer.to_json(), Path(tmp) / "b", options)
        bundle = open_bundle(Path(tmp) / "b")
        session = create_session(bundle, args.threads)
        context = bundle.model["context_length"]
        segs = segments(docs, bundle.model["bos_id"], context)
        full = GraphBackend(bundle, OnnxProgram(session))
        token_bytes = full.layout.bytes_per_token()
        rows = {"full KV": {"1.0": score(full, segs)}}
        print(f"full KV: {rows['full KV']['1.0']:.4f} bits/byte over {sum(len(s) - 1 for s in segs)} bytes")
        for label, policy, compress in VARIANTS:
            for fraction in args.budgets.split(","):
                budget = int(float(fraction) * context * token_bytes)
                settings = RetentionPolicy(budget, policy, args.sinks, args.recent, compress=compress)
                bpb = score(GraphBackend(bundle, OnnxProgram(session), retention=settings), segs)
                rows.setdefault(label, {})[fraction] = bpb
                print(f"{label:28s} budget {float(fraction):.0%}: {bpb:.4f} bits/byte")
    result = {
        "model": args.model,
        "bytes": sum(len(s) - 1 for s in segs),
        "segments": len(segs),
        "sinks": args.sinks,
        "recent": args.recent,
        "bits_per_byte": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retention.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'omnicoder[bench]')")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    fractions = args.budgets.split(",")
    for label, _, _ in VARIANTS:
        ax.plot([float(f) for f in fractions], [rows[label][f] for f in fractions], marker="o", label=label)
    ax.axhline(rows["full KV"]["1.0"], color="gray", linestyle="--", label="full KV")
    ax.set_xlabel("KV budget (fraction of the full-context fp32 KV)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("KV retention policies, omnicoder-tiny")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "retention.png", dpi=120)


if __name__ == "__main__":
    main()
