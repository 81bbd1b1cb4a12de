"""Who guesses the next tokens for speculative decoding: the drafters behind one interface. Torch-free.

A drafter proposes up to `room` tokens after the history (prompt + generated so far); the verifier
(runtimes/speculative.py) checks them in one model call and tells the drafter how many it kept (`observe`), so a
drafter can adapt its draft length. Each proposal carries the distribution it was drawn from, or None for a
deterministic guess (a one-hot proposal: under sampling it is accepted with the target's probability of that
token, and a rejection draws from the target with that token removed, Leviathan et al. 2023).

- `MtpDrafter`: the model's multi-token-prediction heads (their logits come back from the previous verify call).
- `NgramDrafter`: prompt lookup: the longest recent n-gram that ends the history is looked up in the history, and
  the tokens that followed its last earlier occurrence are proposed. Costs no model call; works for every model;
  pays off on input-grounded text (code edits, quoting). It backs off where guesses keep failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from omnicoder.runtimes.sampling import Sampler

Proposal = tuple[int, np.ndarray | None]  # (token, the distribution it was drawn from; None: a deterministic guess)


class Drafter(Protocol):
    needs_heads: bool  # whether propose() reads the MTP heads' logits of the previous verify call

    def propose(self, history: Sequence[int], heads: np.ndarray | None, room: int, sampler: Sampler) -> list[Proposal]:
        """Up to `room` tokens to follow `history`."""

    def observe(self, proposed: int, accepted: int) -> None:
        """How many of the last proposals the verify call kept."""


class MtpDrafter:
    """Drafts from the MTP heads: head j's logits (from the previous verify call) give token j + 1 ahead."""

    needs_heads = True

    def propose(self, history: Sequence[int], heads: np.ndarray | None, room: int, sampler: Sampler) -> list[Proposal]:
        if heads is None:
            return []
        out = []
        for j in range(min(room, heads.shape[0])):
            probs = sampler.probabilities(heads[j])
            out.append((int(np.argmax(probs)) if sampler.greedy else sampler.draw(probs), probs))
        return out

    def observe(self, proposed: int, accepted: int) -> None:
        pass


class NgramDrafter:
    """Prompt-lookup drafting with an adaptive draft length.

    The history's last n tokens (n from `max_ngram` down to `min_ngram`) are looked up among earlier n-grams of the
    history (the most recent occurrence wins) and the tokens that followed are proposed, `length` of them. The
    length doubles after a fully accepted draft (up to `max_draft`), becomes accepted + 1 after a partial one, and
    halves after a rejected first guess; after `patience` calls in a row with nothing accepted the drafter stays
    silent for a pause that doubles each time (up to 64 calls), so text it cannot guess costs close to nothing.
    """

    needs_heads = False

    def __init__(self, max_draft: int = 8, max_ngram: int = 3, min_ngram: int = 2, patience: int = 3) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_draft < 1:
            raise ValueError(f"max_draft must be >= 1, got {max_draft}")
        self.max_draft, self.max_ngram, self.min_ngram, self.patience = max_draft, max_ngram, min_ngram, patience
        self.reset()

    def reset(self) -> None:
        """Forget the history and the adaptation (a new run)."""
        self.length = max(1, self.max_draft // 2)
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}
        self._indexed = 0  # n-grams ending before this history position are in the index
        self._misses, self._pause, self._silent = 0, 1, 0

    def _extend_index(self, history: Sequence[int]) -> None:
        """Index every n-gram that has a following token (so not the history's own suffix)."""
        for end in range(self._indexed, len(history)):
            for n, table in self._index.items():
                if end >= n:
                    table[tuple(history[end - n : end])] = end
        self._indexed = len(history)

    def lookup(self, history: Sequence[int], count: int) -> list[int]:
        """The tokens that followed the most recent earlier occurrence of the longest matching suffix."""
        if len(history) < self._indexed:  # a rewound history: index afresh
            self.reset()
        self._extend_index(history)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            start = self._index[n].get(tuple(history[-n:])) if len(history) >= n else None
            if start is not None:
                return list(history[start : start + count])
        return []

    def propose(self, history: Sequence[int], heads: np.ndarray | None, room: int, sampler: Sampler) -> list[Proposal]:
        if self._silent > 0:
            self._silent -= 1
            self._extend_index(history)
            return []
        return [(token, None) for token in self.lookup(history, min(room, self.length))]

    def observe(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == proposed:
            self.length = min(self.max_draft, 2 * self.length)
        elif accepted > 0:
            self.length = max(1, accepted + 1)
        else:
            self.length = max(1, self.length // 2)
        self._misses = 0 if accepted else self._misses + 1
        if self._misses >= self.patience:
            self._silent, self._pause, self._misses = self._pause, min(64, 2 * self._pause), 0
        elif accepted:
            self._pause = 1


DRAFTERS = {"mtp": MtpDrafter, "ngram": NgramDrafter}
