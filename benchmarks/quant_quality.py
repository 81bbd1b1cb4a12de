"""Quality cost of each weight format, measured through the exported ONNX graphs on held-out code.

    python benchmarks/quant_quality.py [--model default] [--max-bytes 0] [--out docs/results]

For fp32 / fp16 / int8 / int4 (QDQ) / int4 (MatMulNBits): bits per byte on the held-out split (teacher forcing,
windows of the model's context, stride half of it), the delta vs fp32, the next-token argmax agreement with fp32
at every scored position, and bundle size. Writes DIR/quant_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = [
    ("fp32", {"weights": "fp32"}),
    ("fp16", {"weights": "fp16"}),
    ("int8", {"weights": "int8"}),
    ("int4-qdq", {"weights": "int4", "int4_format": "qdq"}),
    ("int4-matmulnbits", {"weights": "int4", "int4_format": "matmulnbits"}),
]


def evaluate(backends: dict, docs: list[bytes], bos: int, pad: int, window: int, batch: int = 8) -> dict:
    from omnicoder.runtimes.scoring import document_windows, log_softmax
    from tqdm import tqdm

    windows = [w for doc in docs for w in document_windows([bos, *doc], window, window // 2)]
    nats = dict.fromkeys(backends, 0.0)
    agree = dict.fromkeys(backends, 0)
    total = 0
    for i in tqdm(range(0, len(windows), batch), desc="windows"):
        chunk = windows[i : i + batch]
        width = max(len(w.ids) for w in chunk)
        ids = np.full((len(chunk), width), pad, np.int64)
        for row, w in enumerate(chunk):
            ids[row, : len(w.ids)] = w.ids
        logits = {name: backend.full_logits(ids) for name, backend in backends.items()}
        reference = logits["fp32"]
        for row, w in enumerate(chunk):
            pos = np.arange(w.first_scored, len(w.targets))
            targets = np.asarray(w.targets[w.first_scored :])
            ref_top = reference[row, pos].argmax(-1)
            for name, values in logits.items():
                nats[name] -= float(log_softmax(values[row, pos])[np.arange(len(pos)), targets].sum())
                agree[name] += int((values[row, pos].argmax(-1) == ref_top).sum())
            total += len(pos)
    return {
        name: {"bits_per_byte": nats[name] / math.log(2) / total, "argmax_agreement": agree[name] / total}
        for name in backends
    } | {"_bytes": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--max-bytes", type=int, default=0, help="score at most this many held-out bytes (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.cli.evaluate import truncate
    from omnicoder.data import find_corpus, read_documents
    from omnicoder.loading import load_model_and_tokenizer

    docs = truncate(read_documents(find_corpus().heldout), args.max_bytes)
    backends, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS:
            model, tokenizer = load_model_and_tokenizer(args.model)
            out = Path(tmp) / name
            manifest = export_onnx_bundle(model, tokenizer.to_json(), out, OnnxExportOptions(**options))
            bundle = open_bundle(out)
            backends[name] = GraphBackend(bundle, OnnxProgram(create_session(bundle, args.threads)))
            sizes[name] = sum(f["bytes"] for f in manifest["files"].values())
        info = bundle.model
        scores = evaluate(backends, docs, info["bos_id"], info["pad_id"], info["context_length"])
    base = scores["fp32"]["bits_per_byte"]
    rows = {}
    for name, _ in VARIANTS:
        bpb = scores[name]["bits_per_byte"]
        rows[name] = {
            "bits_per_byte": round(bpb, 5),
            "delta_percent": round(100 * (bpb / base - 1), 3),
            "argmax_agreement": round(scores[name]["argmax_agreement"], 4),
            "bundle_bytes": sizes[name],
        }
        print(
            f"{name:18s} {bpb:.4f} bits/byte  ({rows[name]['delta_percent']:+.2f}%)  "
            f"argmax agreement {rows[name]['argmax_agreement']:.4f}  bundle {sizes[name] / 1e6:.2f} MB"
        )
    result = {"model": args.model, "held_out_bytes": scores["_bytes"], "files": len(docs), "rows": rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quant_quality.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
