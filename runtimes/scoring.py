"""Bits per byte by teacher forcing, windowed for long files; shared by every runner. Torch-free.

`logits_fn(ids [B, W] int64) -> logits [B, W, V]` runs the model on full windows without a cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from omnicoder.errors import OmniCoderError


def read_files(names: list[str], flag: str) -> list[bytes]:
    """Read files to score; a missing or empty set is a one-line error naming `flag`."""
    docs = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            raise OmniCoderError(f"{flag}: {path} is not a readable file")
        docs.append(path.read_bytes())
    if not any(docs):
        raise OmniCoderError(f"{flag}: all files are empty; nothing to score")
    return docs


@dataclass
class Window:
    ids: list[int]  # inputs
    targets: list[int]  # next tokens
    first_scored: int  # index into targets of the first target to score


def document_windows(tokens: list[int], window: int, stride: int) -> Iterator[Window]:
    """Cover every target of `tokens` exactly once; each window sees up to `window` tokens of context."""
    n = len(tokens)
    scored_upto = 1  # index in `tokens` of the next target to score
    start = 0
    while scored_upto < n:
        ids = tokens[start : start + window]
        targets = tokens[start + 1 : start + window + 1]
        yield Window(ids[: len(targets)], targets, scored_upto - (start + 1))
        scored_upto = start + len(targets) + 1
        start += stride


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def bits_per_byte(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    docs: list[bytes],
    bos_id: int,
    pad_id: int,
    window: int,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Teacher-forced bits per byte of byte documents, each scored from BOS (bytes only)."""
    stride = max(1, window // 2)
    windows = [w for doc in docs for w in document_windows([bos_id, *doc], window, stride)]
    total_nats, total_bytes = 0.0, 0
    bar = tqdm(total=len(windows), desc="scoring", unit="win", disable=not progress)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(len(w.ids) for w in chunk)
        ids = np.full((len(chunk), width), pad_id, np.int64)
        for row, w in enumerate(chunk):
            ids[row, : len(w.ids)] = w.ids
        logp = log_softmax(logits_fn(ids))
        for row, w in enumerate(chunk):
            targets = np.asarray(w.targets[w.first_scored :])
            rows = np.arange(w.first_scored, len(w.targets))
            total_nats -= float(logp[row, rows, targets].sum())
            total_bytes += len(targets)
        bar.update(len(chunk))
    bar.close()
    return {"bits_per_byte": total_nats / math.log(2) / max(total_bytes, 1), "bytes": total_bytes}


def streaming_bits_per_byte(backend, docs: list[bytes], bos_id: int, progress: bool = False) -> dict[str, float]:
    """Bits per byte with each document fed as ONE sequence through the backend's own KV cache (e.g. a paged
    cache with a window), so long files are scored the way a windowed runtime would see them."""
    total_nats, total_bytes = 0.0, 0
    for doc in tqdm(docs, desc="scoring", unit="doc", disable=not progress):
        tokens = [bos_id, *doc]
        backend.reset()
        logp = log_softmax(backend.step_all(tokens[:-1], list(range(len(tokens) - 1))))
        targets = np.asarray(tokens[1:])
        total_nats -= float(logp[np.arange(len(targets)), targets].sum())
        total_bytes += len(targets)
    return {"bits_per_byte": total_nats / math.log(2) / max(total_bytes, 1), "bytes": total_bytes}
