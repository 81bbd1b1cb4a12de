"""Bits per byte for the peers bench: score plans shared by every engine, and llama.cpp output parsing.

Pure numpy (imported by workers in the peers' venv too, where omnicoder is not installed). A score plan is a list of
windows, each `{"ids": [...], "targets": [...], "first": k}`: the engine runs `ids` from an empty cache and the
targets from index `first` on are scored; bits per byte = scored nats / ln 2 / the plan's byte count. Two plans:
- "windows": runtimes/scoring.py's (each file from BOS, windows of W tokens, stride W/2, every token once);
- "llama": llama-perplexity's default (the files concatenated, no BOS for this tokenizer, non-overlapping chunks of
  W tokens, the targets at chunk positions W/2+1 .. W-1 scored), so llama.cpp's PPL is comparable with ours.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def window_nats(logits: np.ndarray, window: dict) -> tuple[float, int]:
    """(nats, tokens) of one window's scored targets, from its logits [W, V]."""
    targets = np.asarray(window["targets"][window["first"] :], np.int64)
    rows = np.arange(window["first"], len(window["targets"]))
    logp = log_softmax(np.asarray(logits)[rows])
    return -float(logp[np.arange(len(rows)), targets].sum()), len(targets)


def bpb(nats: float, n_bytes: int) -> float:
    return nats / math.log(2) / max(n_bytes, 1)


def score_plan(logits_fn: Callable[[list[int]], np.ndarray], plan: dict, progress: bool = False) -> dict:
    """Run every window of `plan` through `logits_fn(ids) -> [W, V]` and aggregate to bits per byte."""
    from tqdm import tqdm

    nats, tokens = 0.0, 0
    for window in tqdm(plan["windows"], desc=f"scoring ({plan['name']})", unit="win", disable=not progress):
        n, t = window_nats(logits_fn(window["ids"]), window)
        nats, tokens = nats + n, tokens + t
    return {"bits_per_byte": bpb(nats, plan["bytes"]), "nats": nats, "tokens": tokens, "bytes": plan["bytes"]}


def llama_chunk_plan(tokens: list[int], n_ctx: int, token_bytes: Callable[[list[int]], int]) -> dict:
    """llama-perplexity's default scheme over one token stream (see module doc); bytes = the scored tokens' bytes."""
    first = n_ctx // 2
    windows, n_bytes = [], 0
    for c in range(len(tokens) // n_ctx):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        # logits at positions first .. n_ctx-2 predict chunk[first+1 .. n_ctx-1]
        windows.append({"ids": chunk[:-1], "targets": chunk[1:], "first": first})
        n_bytes += token_bytes(chunk[first + 1 :])
    return {"name": "llama", "windows": windows, "bytes": n_bytes, "scored": len(windows) * (n_ctx - first - 1)}


def parse_perplexity(output: str) -> dict:
    """Chunks, n_ctx and the final PPL from llama-perplexity's log."""
    chunks = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", output)
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", output)
    if not chunks or not final:
        raise ValueError("llama-perplexity output has no chunk count or final estimate")
    return {"chunks": int(chunks[1]), "n_ctx": int(chunks[2]), "ppl": float(final[1]), "ppl_err": float(final[2])}


def perplexity_bpb(parsed: dict, n_bytes: int) -> dict:
    """llama-perplexity's mean NLL over its scored tokens (chunks x (n_ctx/2 - 1)) as bits per byte of their bytes."""
    scored = parsed["chunks"] * (parsed["n_ctx"] - parsed["n_ctx"] // 2 - 1)
    nats = math.log(parsed["ppl"]) * scored
    return {"bits_per_byte": bpb(nats, n_bytes), "nats": nats, "tokens": scored, "bytes": n_bytes}


def parse_llama_bench(text: str) -> dict:
    """Prefill (pp, depth 0) and decode (tg, deepest depth) tok/s from `llama-bench -o json`."""
    records = json.loads(text)
    prefill = [r for r in records if r["n_prompt"] and not r["n_gen"] and not r.get("n_depth", 0)]
    decode = sorted((r for r in records if r["n_gen"] and not r["n_prompt"]), key=lambda r: r.get("n_depth", 0))
    if not prefill or not decode:
        raise ValueError("llama-bench JSON has no prompt or generation test")
    return {
        "prefill_tok_s": prefill[0]["avg_ts"],
        "decode_tok_s": decode[-1]["avg_ts"],
        "prefill_tok_s_sd": prefill[0]["stddev_ts"],
        "decode_tok_s_sd": decode[-1]["stddev_ts"],
        "decode_depth": decode[-1].get("n_depth", 0),
    }
