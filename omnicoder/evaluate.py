"""Bits per byte by teacher forcing, windowed for long files, with gzip / xz of the same bytes for reference."""

from __future__ import annotations

import gzip
import lzma
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from omnicoder.model import OmniCoder


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


@torch.no_grad()
def bits_per_byte(
    model: OmniCoder,
    docs: list[bytes],
    window: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Teacher-forced bits per byte of `docs` (each scored from BOS; bytes only)."""
    cfg = model.config
    window = window or cfg.max_seq_len
    stride = max(1, window // 2)
    windows = [w for doc in docs for w in document_windows([cfg.bos_id, *doc], window, stride)]
    total_bits, total_bytes = 0.0, 0
    bar = tqdm(total=len(windows), desc="scoring", unit="win", disable=not progress)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(len(w.ids) for w in chunk)
        ids = np.full((len(chunk), width), cfg.pad_id, np.int64)
        tgt = np.full((len(chunk), width), -100, np.int64)
        for row, w in enumerate(chunk):
            ids[row, : len(w.ids)] = w.ids
            tgt[row, w.first_scored : len(w.targets)] = w.targets[w.first_scored :]
        ids_t = torch.from_numpy(ids)
        positions = torch.arange(width).expand(len(chunk), width)
        logits = model(ids_t, positions, heads=False).logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(tgt).flatten(), ignore_index=-100, reduction="sum")
        total_bits += nll.item() / math.log(2)
        total_bytes += int((tgt != -100).sum())
        bar.update(len(chunk))
    bar.close()
    return {"bits_per_byte": total_bits / max(total_bytes, 1), "bytes": total_bytes}


def compressor_bits_per_byte(docs: list[bytes]) -> dict[str, float]:
    """gzip -9 and xz -9e bits per byte of the concatenated documents (and of each file compressed alone)."""
    data = b"".join(docs)
    n = max(len(data), 1)
    return {
        "gzip_bits_per_byte": 8 * len(gzip.compress(data, 9)) / n,
        "xz_bits_per_byte": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / n,
        "gzip_per_file_bits_per_byte": 8 * sum(len(gzip.compress(d, 9)) for d in docs) / n,
        "xz_per_file_bits_per_byte": 8 * sum(len(lzma.compress(d, preset=9)) for d in docs) / n,
    }
