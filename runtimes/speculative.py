"""Self-speculative decoding with the model's multi-token-prediction heads. Torch-free.

At the last cached position p the LM head gives token p+1 and MTP head j drafts token p+1+j. One model call
with T = k + 1 tokens [x, d_1 .. d_k] verifies the drafts: d_i is accepted with probability
min(1, p_i(d_i) / q_i(d_i)) (p_i: the target distribution after the previous tokens, q_i: the draft head's
distribution; both through the same temperature / top-k / top-p), and on the first rejection a token is drawn
from the normalized residual max(0, p_i - q_i) and the cache is rolled back to the accepted prefix. This is the
standard rule (Leviathan et al. 2023; Chen et al. 2023): the output distribution equals plain sampling. With
greedy sampling p and q are one-hot, so the output equals plain greedy decoding token for token.

With a KV window (paging), the verify call attends the window as of its first token, so the later drafts see
up to k tokens more than plain decoding would: outputs can then differ slightly from plain windowed decoding.

A backend adds two methods to the decode-step protocol: `verify(ids, positions) -> (logits [T, V],
mtp_logits [T, n_mtp, V])`, appending the T tokens to its cache, and `truncate(length)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from omnicoder.runtimes.decode_loop import StepBackend, check_prompt_fits, stop_set
from omnicoder.runtimes.sampling import Sampler
from omnicoder.runtimes.stats import GenerationStats, peak_rss_mb

from omnicoder.errors import OmniCoderError


class SpeculativeBackend(StepBackend, Protocol):
    n_mtp: int

    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Run and cache the tokens; logits [T, V] and MTP logits [T, n_mtp, V] of every one."""

    def truncate(self, length: int) -> None:
        """Drop cached tokens beyond `length` (rejected drafts)."""


def draft(sampler: Sampler, logits: np.ndarray) -> tuple[int, np.ndarray]:
    """A draft token from a head's logits and the distribution it was drawn from."""
    probs = sampler.probabilities(logits)
    token = int(np.argmax(probs)) if sampler.greedy else sampler.draw(probs)
    return token, probs


def accept(sampler: Sampler, token: int, target: np.ndarray, proposal: np.ndarray) -> tuple[bool, int]:
    """The acceptance rule: (accepted, token to emit). On rejection the token comes from the residual."""
    if sampler.greedy:
        best = int(np.argmax(target))
        return best == token, best
    if sampler.rng.next_double() * proposal[token] < target[token]:  # u < p/q without dividing by q
        return True, token
    residual = np.maximum(target - proposal, 0.0)
    total = residual.sum()
    if total <= 0:  # p == q: rejection has probability 0; guard rounding
        return True, token
    return False, sampler.draw(residual / total)


def check_speculative(k: int, n_mtp: int) -> None:
    if k < 0:
        raise OmniCoderError(f"--speculative must be >= 0, got {k}")
    if k > n_mtp:
        raise OmniCoderError(f"--speculative {k} needs {k} MTP heads but the model has {n_mtp}; use at most {n_mtp}")


def generate_ids_speculative(
    backend: SpeculativeBackend,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | list[int],
    k: int,
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], GenerationStats]:
    """Like `decode_loop.generate_ids`, drafting `k` tokens per call with the MTP heads."""
    check_speculative(k, backend.n_mtp)
    context = check_prompt_fits(backend, prompt_ids)
    backend.reset()
    stats = GenerationStats(prompt_tokens=len(prompt_ids), stop_reason="limit")
    out: list[int] = []
    start = time.perf_counter()
    logits, mtp = backend.verify(list(prompt_ids), list(range(len(prompt_ids))))
    stats.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    last_logits, last_mtp = logits[-1], mtp[-1]
    pending: int | None = None  # a token decided (from a rejection) but not yet run through the model

    def emit(token: int) -> bool:
        """Record a token; False when generation must stop."""
        if token in stop_set(eos_id):  # one EOS id or several stop ids
            stats.stop_reason = "eos"
            return False
        out.append(token)
        if on_token is not None:
            on_token(token)
        if len(out) >= max_new_tokens:
            return False
        if backend.cache_length + 1 >= context:
            stats.stop_reason = "context"
            return False
        return True

    while True:
        x = sampler.sample(last_logits) if pending is None else pending
        if not emit(x):
            break
        room = min(k, max_new_tokens - len(out), context - backend.cache_length - 1)
        drafts = [draft(sampler, last_mtp[j]) for j in range(max(room, 0))]
        base = backend.cache_length
        ids = [x] + [d for d, _ in drafts]
        logits, mtp = backend.verify(ids, list(range(base, base + len(ids))))
        stats.model_calls += 1
        stats.draft_tokens += len(drafts)
        kept, pending, stop = 0, None, False
        for i, (token, proposal) in enumerate(drafts):
            ok, chosen = accept(sampler, token, sampler.probabilities(logits[i]), proposal)
            if not ok:
                pending = chosen
                break
            kept += 1
            stats.accepted_tokens += 1
            if not emit(token):
                stop = True
                break
        backend.truncate(base + 1 + kept)
        last_logits, last_mtp = logits[kept], mtp[kept]
        if stop:
            break
    stats.decode_seconds = time.perf_counter() - start if out else 0.0
    stats.generated_tokens = len(out)
    stats.peak_rss_mb = peak_rss_mb()
    return out, stats
