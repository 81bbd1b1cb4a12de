"""How exactly self-speculative decoding (`--speculative K`) reproduces plain decoding, per weight precision.

    python benchmarks/speculative_exactness.py [--weights fp32 int8 int4] [--prompts 24] [--new-tokens 160]
        [--k 2] [--threads 1] [--bundles DIR] [--score-docs 16] [--score-bytes 512] [--out DIR]

For ONNX bundles of the default model (DIR/<weights> when given and present, else exported to a temporary
directory), through the torch-free runner's backend:

- greedy agreement of speculative with plain decoding over held-out code prompts plus the prompt from the issue
  ("def parse_args(argv): ..."): the fraction of prompts with identical output and the mean first divergence
  (tokens) among those that differ; for speculative as shipped (the tie guard where the bundle is exact, see
  runtimes/speculative.py) and with the guard off (fp32) or forced at 10x the measured discrepancy (int8, int4);
- model calls per generated token (verify calls plus the one-token calls the guard replays);
- decode speed of speculative over plain, plain and speculative runs alternating prompt by prompt in one process;
- held-out bits per byte by teacher forcing through the KV cache with one-token calls (what plain decoding
  computes) and with (K+1)-token calls (what the verify calls compute), and the largest |logit| difference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ISSUE_PROMPT = "def parse_args(argv):\n    parser = argparse.ArgumentParser("


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=["fp32", "int8", "int4"])
    p.add_argument("--prompts", type=int, default=24, help="held-out prompts (plus the issue's)")
    p.add_argument("--prompt-bytes", type=int, default=192)
    p.add_argument("--new-tokens", type=int, default=160)
    p.add_argument("--k", type=int, default=2, help="drafts per verify call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bundles", default=None, help="reuse DIR/<weights> bundles of the default model")
    p.add_argument("--score-docs", type=int, default=16)
    p.add_argument("--score-bytes", type=int, default=512)
    p.add_argument("--out", default=None, help="write DIR/speculative_exactness.json")
    return p.parse_args()


def bundle_dir(weights: str, reuse: str | None, tmp: Path) -> Path:
    """A bundle of the default model with these weights: DIR/<weights> if it exists, else a fresh export."""
    if reuse and (Path(reuse) / weights / "manifest.json").is_file():
        return Path(reuse) / weights
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle

    from omnicoder.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("default")
    export_onnx_bundle(model, tokenizer.to_json(), tmp / weights, OnnxExportOptions(weights=weights))
    return tmp / weights


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where two outputs differ (a length difference counts); None when identical."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def agreement(plain: list[list[int]], fast: list[list[int]]) -> dict:
    """Fraction of identical outputs and the mean first divergence among the others."""
    parts = [first_divergence(p, f) for p, f in zip(plain, fast, strict=True)]
    differing = [d for d in parts if d is not None]
    return {
        "identical": f"{len(parts) - len(differing)}/{len(parts)}",
        "identical_fraction": round(1 - len(differing) / len(parts), 3),
        "mean_first_divergence": round(float(np.mean(differing)), 1) if differing else None,
    }


def greedy_runs(backend, prompts: list[list[int]], args, eos: int, forced_margin: float) -> dict:
    """Plain, speculative as shipped and speculative with the other guard setting, alternating per prompt."""
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams
    from omnicoder.runtimes.speculative import Speculation

    greedy = Sampler(SamplingParams(temperature=0))
    outs = {"plain": [], "speculative": [], "other": []}
    tokens = {"plain": 0, "speculative": 0, "other": 0}
    seconds = {"plain": 0.0, "speculative": 0.0, "other": 0.0}
    calls = {"speculative": 0, "other": 0}
    speculation = Speculation(backend, greedy, args.k)
    other = Speculation(backend, greedy, args.k, tie_margin=forced_margin)
    generate_ids(backend, prompts[0], args.new_tokens, greedy, eos, None, speculation)  # warm-up, not counted
    for prompt in tqdm(prompts, desc="greedy", unit="prompt", leave=False):
        runs = {
            "plain": lambda p=prompt: generate_ids(backend, p, args.new_tokens, greedy, eos),
            "speculative": lambda p=prompt: generate_ids(backend, p, args.new_tokens, greedy, eos, None, speculation),
            "other": lambda p=prompt: generate_ids(backend, p, args.new_tokens, greedy, eos, None, other),
        }
        for name, run in runs.items():
            out, stats = run()
            outs[name].append(out)
            tokens[name] += max(stats.generated_tokens - 1, 0)  # decode steps, as the stats line counts them
            seconds[name] += stats.decode_seconds
            if name in calls:
                calls[name] += stats.model_calls
    generated = {name: sum(len(o) for o in outs[name]) for name in outs}
    speed = {name: tokens[name] / max(seconds[name], 1e-9) for name in outs}
    return {
        "plain_decode_tok_s": round(speed["plain"], 1),
        "speculative": {
            **agreement(outs["plain"], outs["speculative"]),
            "calls_per_token": round(calls["speculative"] / max(generated["speculative"], 1), 3),
            "speed_vs_plain": round(speed["speculative"] / speed["plain"], 2),
        },
        "other_guard": {
            "tie_margin": forced_margin,
            **agreement(outs["plain"], outs["other"]),
            "calls_per_token": round(calls["other"] / max(generated["other"], 1), 3),
            "speed_vs_plain": round(speed["other"] / speed["plain"], 2),
        },
    }


def chunked_logits(backend, tokens: list[int], rows: int) -> np.ndarray:
    """Teacher-forced logits [len(tokens), V] through the cache, `rows` tokens per call."""
    backend.reset()
    parts = []
    for start in range(0, len(tokens), rows):
        part = tokens[start : start + rows]
        parts.append(np.asarray(backend.step_all(part, list(range(start, start + len(part))))).reshape(len(part), -1))
    return np.concatenate(parts)


def score_rows(backend, docs: list, bos: int, rows_options: tuple[int, ...], n_bytes: int) -> dict:
    """Bits per byte per call width, and the largest |logit| difference of each width from one-token calls."""
    from omnicoder.runtimes.scoring import log_softmax, summary

    nats = dict.fromkeys(rows_options, 0.0)
    worst = dict.fromkeys(rows_options, 0.0)
    count = 0
    for doc in tqdm(docs, desc="scoring", unit="doc", leave=False):
        tokens = [bos, *doc]
        targets = np.asarray(tokens[1:])
        single = None
        for rows in rows_options:
            logits = chunked_logits(backend, tokens[:-1], rows)
            single = logits if single is None else single
            nats[rows] -= float(log_softmax(logits)[np.arange(len(targets)), targets].sum())
            worst[rows] = max(worst[rows], float(np.abs(logits - single).max()))
        count += len(targets)
    return {
        f"{rows}_token_calls": {
            "bits_per_byte": round(summary(nats[rows], count, n_bytes)["bits_per_byte"], 5),
            "max_abs_logit_diff_vs_one_token": float(f"{worst[rows]:.3g}"),
        }
        for rows in rows_options
    }


def main() -> None:
    args = parse_args()
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
    from omnicoder.runtimes.scoring import encode_documents
    from omnicoder.runtimes.speculative import VERIFY_DISCREPANCY, exactness

    from omnicoder.data import find_corpus, read_documents

    heldout = read_documents(find_corpus().heldout)
    prompt_docs = [d for d in heldout if len(d) > args.prompt_bytes][: args.prompts]
    texts = [d[: args.prompt_bytes].decode("utf-8", "surrogateescape") for d in prompt_docs] + [ISSUE_PROMPT]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for weights in args.weights:
            bundle = open_bundle(bundle_dir(weights, args.bundles, Path(tmp)))
            tokenizer = bundle.tokenizer()
            backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, args.threads)))
            prompts = [tokenizer.encode(t, add_bos=True) for t in texts]
            guard = exactness(backend).tie_margin
            forced = 0.0 if guard else 10 * VERIFY_DISCREPANCY.get(weights, 1.0)
            start = time.perf_counter()
            row = {"tie_margin": guard, **greedy_runs(backend, prompts, args, bundle.model["eos_id"], forced)}
            byte_level = bundle.manifest["tokenizer"]["type"] == "omnicoder-byte"
            raw = [d[: args.score_bytes] for d in heldout[: args.score_docs]]
            docs, n_bytes = encode_documents(tokenizer, raw, byte_level, "--score-docs")
            row["scoring"] = score_rows(backend, docs, bundle.model["bos_id"], (1, args.k + 1), n_bytes)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results[weights] = row
            print(f"{weights}: {json.dumps(row)}", flush=True)
    print_table(results, args)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        document = {"k": args.k, "prompts": len(texts), "new_tokens": args.new_tokens, "threads": args.threads}
        (out / "speculative_exactness.json").write_text(json.dumps({**document, "results": results}, indent=2) + "\n")


def print_table(results: dict, args) -> None:
    """The docs/benchmarks.md table."""
    k1 = f"{args.k + 1}_token_calls"
    print(
        "| weights | identical greedy | mean first divergence | calls/token | speed vs plain "
        f"| other guard: margin, identical, calls/token, speed | bits/byte 1-token | bits/byte {args.k + 1}-token "
        "| max logit diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for weights, row in results.items():
        spec, other, score = row["speculative"], row["other_guard"], row["scoring"]
        print(
            f"| {weights} | {spec['identical']} | {spec['mean_first_divergence']} | {spec['calls_per_token']} "
            f"| {spec['speed_vs_plain']}x | {other['tie_margin']:g}, {other['identical']}, "
            f"{other['calls_per_token']}, {other['speed_vs_plain']}x | {score['1_token_calls']['bits_per_byte']} "
            f"| {score[k1]['bits_per_byte']} | {score[k1]['max_abs_logit_diff_vs_one_token']} |"
        )


if __name__ == "__main__":
    main()
