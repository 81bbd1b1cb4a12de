"""Decode tok/s with windowed KV paging at long contexts vs 1k, same run, same bundle.

    python benchmarks/long_context_speed.py --bundle bundles/tiny-int4-32k [--contexts 1024,32768] [--window 384]

Fills the cache to each context (page-sized prefill chunks of random bytes), then times single-token decode
steps (median). With paging, a step attends to sink + window pages only, so its cost should not grow with the
context; the ratio to the first context is the figure to read. Writes DIR/long_context_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--contexts", default="1024,32768")
    p.add_argument("--window", type=int, default=384)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_paging import PagingPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(args.bundle)
    page_len = bundle.sidecar("kv_paging")["page_len"]
    backend = GraphBackend(
        bundle,
        OnnxProgram(create_session(bundle, args.threads)),
        PagingPolicy(page_len=page_len, window=args.window, sink_pages=1),
    )
    rng = np.random.default_rng(0)
    rows = {}
    for context in (int(c) for c in args.contexts.split(",")):
        backend.reset()
        tokens = rng.integers(0, 256, context).tolist()
        start = time.perf_counter()
        backend.step(tokens, list(range(context)))
        fill = time.perf_counter() - start
        steps = []
        for i in range(args.steps):
            start = time.perf_counter()
            backend.step([int(rng.integers(0, 256))], [context + i])
            steps.append(time.perf_counter() - start)
        rows[context] = {
            "decode_tok_s": round(1 / statistics.median(steps), 1),
            "fill_seconds": round(fill, 1),
            "attended_tokens": sum(backend.cache.pages[i].filled for i in backend.cache.attended),
        }
        print(
            f"context {context:7d}: decode {rows[context]['decode_tok_s']:8.1f} tok/s "
            f"(attending {rows[context]['attended_tokens']} tokens; filled in {fill:.1f} s)",
            flush=True,
        )
    first = next(iter(rows.values()))["decode_tok_s"]
    for row in rows.values():
        row["vs_first"] = round(row["decode_tok_s"] / first, 3)
    result = {
        "bundle": str(args.bundle),
        "window": args.window,
        "page_len": page_len,
        "threads": args.threads,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_context_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
