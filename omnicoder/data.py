"""Training corpora: files split into train / held-out by a deterministic hash of their relative path.

The default corpus is the Python standard library of the running interpreter (its `.py` sources,
site-packages excluded). Documents are raw bytes; the byte tokenizer maps them 1:1 to ids.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnicoder.errors import OmniCoderError

HELDOUT_PERCENT = 2
SKIP_DIRS = {"site-packages", "__pycache__", "dist-packages"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relative_path: str, percent: int = HELDOUT_PERCENT) -> bool:
    digest = hashlib.sha256(relative_path.replace(os.sep, "/").encode()).hexdigest()
    return int(digest[:8], 16) % 100 < percent


@dataclass(frozen=True)
class Corpus:
    root: Path
    train: list[Path]
    heldout: list[Path]


def find_corpus(root: str | Path | None = None, suffixes: tuple[str, ...] = (".py",)) -> Corpus:
    """Walk `root` (default: the stdlib) in sorted order and split its files by path hash."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise OmniCoderError(f"corpus directory {root} does not exist")
    train: list[Path] = []
    heldout: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(suffixes):
                path = Path(dirpath) / name
                (heldout if is_heldout(str(path.relative_to(root))) else train).append(path)
    if not train or not heldout:
        raise OmniCoderError(f"corpus {root} has too few {'/'.join(suffixes)} files to split into train and held-out")
    return Corpus(root, train, heldout)


def read_documents(paths: list[Path]) -> list[bytes]:
    docs = []
    for path in paths:
        try:
            docs.append(path.read_bytes())
        except OSError as exc:
            raise OmniCoderError(f"cannot read {path}: {exc.strerror}") from None
    return docs


def token_stream(docs: list[bytes], bos_id: int, eos_id: int) -> np.ndarray:
    """All documents as one uint16 id stream: BOS, bytes, EOS per document."""
    parts = []
    for doc in docs:
        parts.extend(
            (
                np.array([bos_id], np.uint16),
                np.frombuffer(doc, np.uint8).astype(np.uint16),
                np.array([eos_id], np.uint16),
            )
        )
    return np.concatenate(parts)


def sample_batch(stream: np.ndarray, batch: int, length: int, seed: int, step: int) -> np.ndarray:
    """`batch` random windows of `length` ids; the same (seed, step) always gives the same batch."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - length, size=batch)
    return np.stack([stream[s : s + length] for s in starts]).astype(np.int64)
