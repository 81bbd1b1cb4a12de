"""Token sampling on numpy logits: greedy, temperature, top-k, top-p, seeded. Torch-free.

One implementation shared by the PyTorch reference generator and every runner, so equal logits and
an equal seed give equal tokens everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from omnicoder.errors import OmniCoderError


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
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.params.validate()
        self.rng = np.random.default_rng(self.params.seed)

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

    def sample(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        probs = self.probabilities(logits)
        return int(self.rng.choice(probs.size, p=probs))
