"""Token sampling on numpy logits: greedy, temperature, top-k, top-p, seeded. Torch-free.

One implementation shared by the PyTorch reference generator and every runner, so equal logits and
an equal seed give equal tokens everywhere. The sample apps' Kotlin and Swift cores implement the same
algorithm (docs/apps.md), checked against tests/vectors/sampling.json:

- greedy (temperature 0): the first index of the largest logit;
- else float64 `logits / temperature`; top-k keeps every logit >= the k-th largest (ties kept); softmax;
  top-p keeps the smallest prefix of the probabilities sorted descending (stable: ties by index) whose mass
  reaches top_p, renormalized;
- a draw: u = (splitmix64() >> 11) * 2**-53 from a SplitMix64 generator seeded with `seed mod 2**64`, then the
  first index i whose running sum (in index order) of the kept probabilities exceeds u times their total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from omnicoder.errors import OmniCoderError

MASK64 = (1 << 64) - 1


class SplitMix64:
    """The small, fully specified generator behind seeded sampling (Steele, Lea, Flood 2014)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_double(self) -> float:
        """Uniform in [0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * 2.0**-53


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    seed: int = 0

    def validate(self) -> SamplingParams:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise OmniCoderError(f"--temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise OmniCoderError(f"--top-k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise OmniCoderError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self


@dataclass
class Sampler:
    params: SamplingParams
    rng: SplitMix64 = field(init=False)

    def __post_init__(self) -> None:
        self.params.validate()
        self.rng = SplitMix64(self.params.seed)

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution this sampler draws from (after temperature, top-k, top-p), as float64."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.greedy:
            probs = np.zeros_like(logits)
            probs[int(np.argmax(logits))] = 1.0
            return probs
        scaled = logits / self.params.temperature
        k = self.params.top_k
        if 0 < k < scaled.size:
            kth = np.partition(scaled, -k)[-k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if self.params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = cumulative - probs[order] < self.params.top_p  # smallest prefix reaching top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return probs

    def draw(self, probs: np.ndarray) -> int:
        """Inverse CDF: the first index whose running sum exceeds u * total (never a zero-probability index)."""
        cdf = np.cumsum(probs)
        index = int(np.searchsorted(cdf, self.rng.next_double() * cdf[-1], side="right"))
        return index if index < probs.size else int(np.flatnonzero(probs)[-1])

    def sample(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        return self.draw(self.probabilities(logits))
