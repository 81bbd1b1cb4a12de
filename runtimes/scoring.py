"""Bits per byte by teacher forcing, windowed for long files; shared by every runner. Torch-free.

`logits_fn(ids [B, W] int64) -> logits [B, W, V]` runs the model on full windows without a cache.
Any tokenizer: a document is encoded to ids (a byte-level model's ids are its bytes), scored after the model's
BOS, and the nats of all its tokens are divided by its UTF-8 bytes, so bits per byte compare across tokenizers;
token perplexity comes alongside.
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


def encode_documents(tokenizer, docs: list[bytes], byte_level: bool, flag: str) -> tuple[list, int]:
    """(token id sequences, total bytes) of `docs`; a subword tokenizer needs UTF-8 text (one-line error)."""
    n_bytes = sum(len(doc) for doc in docs)
    if byte_level:
        return list(docs), n_bytes
    encoded = []
    for i, doc in enumerate(docs):
        try:
            text = doc.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OmniCoderError(
                f"{flag}: file {i + 1} is not UTF-8 text (byte {exc.start}); this model's tokenizer scores text"
            ) from None
        encoded.append(tokenizer.encode(text, add_bos=False))
    return encoded, n_bytes


def summary(nats: float, tokens: int, n_bytes: int | None) -> dict[str, float]:
    """Bits per byte (over `n_bytes`, default: one byte per token) and token perplexity of a scored total."""
    n_bytes = tokens if n_bytes is None else n_bytes
    return {
        "bits_per_byte": nats / math.log(2) / max(n_bytes, 1),
        "bytes": n_bytes,
        "tokens": tokens,
        "token_perplexity": math.exp(min(nats / max(tokens, 1), 700.0)),
    }


def bits_per_byte(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    docs: list,
    bos_id: int,
    pad_id: int,
    window: int,
    batch_size: int = 8,
    progress: bool = False,
    n_bytes: int | None = None,
) -> dict[str, float]:
    """Teacher-forced bits per byte of documents (id sequences, see `encode_documents`), each scored from BOS."""
    stride = max(1, window // 2)
    windows = [w for doc in docs for w in document_windows([bos_id, *doc], window, stride)]
    total_nats, total_tokens = 0.0, 0
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
            total_tokens += len(targets)
        bar.update(len(chunk))
    bar.close()
    return summary(total_nats, total_tokens, n_bytes)


def streaming_bits_per_byte(
    backend, docs: list, bos_id: int, progress: bool = False, n_bytes: int | None = None
) -> dict[str, float]:
    """Bits per byte with each document fed as ONE sequence through the backend's own KV cache (e.g. a paged
    cache with a window), so long files are scored the way a windowed runtime would see them."""
    total_nats, total_tokens = 0.0, 0
    for doc in tqdm(docs, desc="scoring", unit="doc", disable=not progress):
        tokens = [bos_id, *doc]
        backend.reset()
        logp = log_softmax(backend.step_all(tokens[:-1], list(range(len(tokens) - 1))))
        targets = np.asarray(tokens[1:])
        total_nats -= float(logp[np.arange(len(targets)), targets].sum())
        total_tokens += len(targets)
    return summary(total_nats, total_tokens, n_bytes)
