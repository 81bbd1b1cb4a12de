"""Bits per byte on long held-out sequences with windowed KV paging vs the model's own sliding windows.

    python benchmarks/long_context_quality.py --bundle bundles/omnicoder-tiny-int4 \
        --long-bundle bundles/tiny-int4-32k [--lengths 2048,4096] [--window 384]

The held-out split is concatenated and cut into sequences of each length. Rows: (a) the bundle's windowed
teacher-forced scorer (windows of its context, stride half of it: full KV inside each window); (b) the same
bundle streaming each sequence through a paged cache (sink pages + window; positions run past the trained
context with plain RoPE); (c) the long-context (RoPE-scaled) bundle streaming the same way. Writes
DIR/long_context_quality.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--long-bundle", required=True)
    p.add_argument("--lengths", default="2048,4096")
    p.add_argument("--window", type=int, default=448)
    p.add_argument("--sink-pages", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=131072, help="held-out bytes per length")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.kv_paging import PagingPolicy
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
    from omnicoder.runtimes.scoring import bits_per_byte, streaming_bits_per_byte

    from omnicoder.data import find_corpus, read_documents

    text = b"\n".join(read_documents(find_corpus().heldout))
    results = {}
    for length in (int(n) for n in args.lengths.split(",")):
        usable = min(len(text), args.max_bytes) // length * length
        docs = [text[i : i + length] for i in range(0, usable, length)]
        row = {}
        for label, path, paged in (
            ("a_sliding_windows", args.bundle, False),
            ("b_paged_plain_rope", args.bundle, True),
            ("c_paged_scaled_rope", args.long_bundle, True),
        ):
            bundle = open_bundle(path)
            info = bundle.model
            policy = None
            if paged:
                page_len = bundle.sidecar("kv_paging")["page_len"]
                policy = PagingPolicy(page_len=page_len, window=args.window, sink_pages=args.sink_pages)
            backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, 2)), policy)
            if paged:
                score = streaming_bits_per_byte(backend, docs, info["bos_id"])
            else:
                score = bits_per_byte(backend.full_logits, docs, info["bos_id"], info["pad_id"], info["context_length"])
            row[label] = round(score["bits_per_byte"], 4)
            print(f"{length:5d} tokens x {len(docs)}: {label:22s} {row[label]:.4f} bits/byte", flush=True)
        results[length] = row
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "window": args.window,
        "sink_pages": args.sink_pages,
        "bundle": args.bundle,
        "long_bundle": args.long_bundle,
        "rows": results,
    }
    (out / "long_context_quality.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
