"""Prefill and decode tokens/s of PyTorch eager vs ONNX fp32 / int4 (Attention) / int4 (GroupQueryAttention),
in one run, medians, fixed threads; with the memory-bandwidth bound of each configuration.

    python benchmarks/decode_speed.py [--models default,random-100m] [--threads 2] [--out DIR]

Timings on shared machines vary 2-3x between runs: read the ratios within one run. Results go to
DIR/decode_speed.json and DIR/decode_speed.png; docs/benchmarks.md quotes them with this command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def memory_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth (bytes read + written per second), best of a few numpy copies of a large buffer."""
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def weight_bytes(model, weights: str) -> int:
    """Bytes of weights one decode step reads: every parameter once; int4 layers at 4 bits + one fp32 scale
    per 32 weights. The tied embedding counts once: the LM head reads it whole (the gather reads one row)."""
    import torch

    quantized = 0
    if weights == "int4":
        quantized = sum(
            m.weight.numel()
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and not name.startswith(("lm_head", "retention"))
            and m.in_features % 32 == 0
        )
    return 4 * (model.num_parameters() - quantized) + quantized // 2 + 4 * (quantized // 32)


def kv_bytes(config, context: int) -> int:
    return 4 * config.kv_floats_per_token_per_layer * config.n_layers * context


def time_backend(backend, prompt_len: int, decode_steps: int, repeats: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) medians: prefill `prompt_len` tokens; decode with that past."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 256, prompt_len).tolist()
    backend.reset()  # warm-up: first calls allocate and pick kernels
    backend.step(prompt, list(range(prompt_len)))
    for i in range(4):
        backend.step([1], [prompt_len + i])
    prefill, decode = [], []
    for _ in range(repeats):
        backend.reset()
        start = time.perf_counter()
        backend.step(prompt, list(range(prompt_len)))
        prefill.append(prompt_len / (time.perf_counter() - start))
        steps = []
        for i in range(decode_steps):
            start = time.perf_counter()
            backend.step([int(rng.integers(0, 256))], [prompt_len + i])
            steps.append(time.perf_counter() - start)
        decode.append(1 / statistics.median(steps))
    return statistics.median(prefill), statistics.median(decode)


def run(model_names: list[str], threads: int, prompt_len: int, decode_steps: int, repeats: int) -> dict:
    import torch
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    from omnicoder.generate import TorchBackend
    from omnicoder.model import OmniCoder
    from omnicoder.presets import preset
    from omnicoder.tokenizer import ByteTokenizer
    from omnicoder.weights import load_model

    torch.set_num_threads(threads)
    bandwidth = memory_bandwidth_gbs()
    results = {
        "threads": threads,
        "prompt_tokens": prompt_len,
        "decode_steps": decode_steps,
        "repeats": repeats,
        "bandwidth_gbs": round(bandwidth, 2),
        "models": {},
    }
    for name in model_names:
        if name == "default":
            make = lambda: load_model("default")  # noqa: E731
        else:
            config = preset(name)
            torch.manual_seed(0)
            state = OmniCoder(config).state_dict()

            def make(state=state, config=config):
                model = OmniCoder(config).eval()
                model.load_state_dict(state)
                return model

        base = make()
        config = base.config
        rows = {}
        context = prompt_len + decode_steps // 2
        rows["pytorch-eager-fp32"] = (TorchBackend(base), weight_bytes(base, "fp32"))
        variants = [("onnx-fp32", "fp32", "onnx"), ("onnx-int4-attention", "int4", "onnx")]
        if config.attention == "gqa":
            variants.append(("onnx-int4-gqa", "int4", "ort-gqa"))
        with tempfile.TemporaryDirectory() as tmp:
            for label, weights, attention in variants:
                out = Path(tmp) / label
                export_onnx_bundle(
                    make(), ByteTokenizer().to_json(), out, OnnxExportOptions(weights=weights, attention=attention)
                )
                bundle = open_bundle(out)
                rows[label] = (
                    GraphBackend(bundle, OnnxProgram(create_session(bundle, threads))),
                    weight_bytes(base, weights),
                )
            measured = {}
            for label, (backend, wbytes) in rows.items():
                prefill, decode = time_backend(backend, prompt_len, decode_steps, repeats)
                read = wbytes + kv_bytes(config, context)
                measured[label] = {
                    "prefill_tok_s": round(prefill, 1),
                    "decode_tok_s": round(decode, 1),
                    "bytes_per_decode_token": read,
                    "bandwidth_bound_tok_s": round(bandwidth * 1e9 / read, 1),
                }
                print(
                    f"{name:12s} {label:22s} prefill {prefill:9.1f} tok/s   decode {decode:8.1f} tok/s   "
                    f"bound {bandwidth * 1e9 / read:8.1f} tok/s",
                    flush=True,
                )
        eager = measured["pytorch-eager-fp32"]["decode_tok_s"]
        for row in measured.values():
            row["decode_vs_eager"] = round(row["decode_tok_s"] / eager, 2)
        results["models"][name] = {"parameters": base.num_parameters(), "attention": config.attention, "rows": measured}
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        rows = results["models"][name]["rows"]
        labels = list(rows)
        decode = [rows[k]["decode_tok_s"] for k in labels]
        bound = [rows[k]["bandwidth_bound_tok_s"] for k in labels]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, decode, 0.4, label="decode tok/s (measured)")
        ax.bar(x + 0.2, bound, 0.4, label="memory-bandwidth bound", alpha=0.5)
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(
            f"{name} ({results['models'][name]['parameters'] / 1e6:.1f}M params, {results['threads']} threads)"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,random-100m", help="'default' or preset names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()
    results = run(args.models.split(","), args.threads, args.prompt_tokens, args.decode_steps, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        plot(results, out / "decode_speed.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'omnicoder[bench]')")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
