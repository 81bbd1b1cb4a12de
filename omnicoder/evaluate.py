"""Bits per byte of the PyTorch model (the shared windowed scorer in `omnicoder.runtimes.scoring`),
with gzip / xz of the same bytes for reference."""

from __future__ import annotations

import gzip
import lzma

import numpy as np
import torch

from omnicoder.model import OmniCoder
from omnicoder.runtimes import scoring


def bits_per_byte(
    model: OmniCoder,
    docs: list,
    window: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    n_bytes: int | None = None,
) -> dict[str, float]:
    """Teacher-forced bits per byte of `docs` (id sequences, `scoring.encode_documents`; each scored from BOS)."""
    cfg = model.config

    @torch.no_grad()
    def logits_fn(ids: np.ndarray) -> np.ndarray:
        ids_t = torch.from_numpy(ids)
        positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        return model(ids_t, positions, heads=False).logits.float().numpy()

    return scoring.bits_per_byte(
        logits_fn, docs, cfg.bos_id, cfg.pad_id, window or cfg.max_seq_len, batch_size, progress, n_bytes
    )


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
