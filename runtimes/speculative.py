"""Speculative decoding: drafts from a drafter (runtimes/drafters.py: the MTP heads or prompt-lookup n-grams),
verified in one model call. Torch-free.

One call with [x, d_1 .. d_k] verifies the drafts: d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i))
(target vs draft distribution, both through the same temperature / top-k / top-p; a deterministic guess has a
one-hot q); on the first rejection a token is drawn from the normalized residual max(0, p_i - q_i) and the cache is
rolled back (Leviathan et al. 2023; Chen et al. 2023).

What holds: a T-token call rounds differently from T one-token calls, so verify rows equal plain decoding's logits
only up to VERIFY_DISCREPANCY (measured, docs/benchmarks.md). Greedy with fp32/fp16 weights and KV
(`exactness(backend).tie_margin` > 0): a verify row decides a token only when its top-2 lead is at least
FLOAT_TIE_MARGIN; at a closer row the cache is rolled back to the last row plain decoding computed identically and
the tokens since are replayed one per call, so the output is plain greedy decoding's, token for token. Other
precisions, sampling, a KV window, predicted pages or a retention budget: outputs follow plain decoding only
approximately; `exactness_note` is the stderr line a runner prints then.

`Speculation` is a strategy of the one decode loop (runtimes/decode_loop.py, which keeps the prefill, stops, limits
and stats); a backend adds `verify(ids, positions) -> (logits [T, V], mtp_logits [T, n_mtp, V] (n_mtp may be 0))` and
`truncate(length)`, and may name its `precision` and `paging` / `retention` (none: fp32, no policy).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from omnicoder.runtimes.decode_loop import Run, StepBackend
from omnicoder.runtimes.drafters import Drafter, MtpDrafter, NgramDrafter, Proposal
from omnicoder.runtimes.kv_window import WindowedKVCache
from omnicoder.runtimes.sampling import Sampler

from omnicoder.errors import OmniCoderError

# The largest |logit| difference between a verify call's rows and one-token steps, default model, held-out code
# (benchmarks/speculative_exactness.py), by weight / KV precision. A greedy decision flips only where plain
# decoding's top-2 lead is under twice it.
VERIFY_DISCREPANCY = {"fp32": 3.3e-5, "fp16": 2.3e-5, "int4": 0.15, "int8": 2.2}
KV_DISCREPANCY = {"fp16": 0.0032, "u8": 0.03}  # added by a quantized KV cache (fp32 weights)
FLOAT_TIE_MARGIN = 1e-3  # the greedy guard's margin in logits: 30x the float discrepancy above
FLOAT_WEIGHTS = ("fp32", "fp16")
PRECISION_CAVEATS = {
    "int4": "int4 weights (onnxruntime's MatMulNBits rounds a multi-token verify call differently from a one-token "
    f"step: logits differ by up to ~{VERIFY_DISCREPANCY['int4']:g})",
    "int8": "int8 weights (activations share one quantization scale per call, so a verify call's tokens quantize "
    f"differently from one-token steps: logits differ by up to ~{VERIFY_DISCREPANCY['int8']:g})",
}


class SpeculativeBackend(StepBackend, Protocol):
    n_mtp: int

    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Run and cache the tokens; logits [T, V] and MTP logits [T, n_mtp, V] of every one."""

    def truncate(self, length: int) -> None:
        """Drop cached tokens beyond `length` (rejected drafts)."""


@dataclass(frozen=True)
class Exactness:
    """How close speculative decoding comes to plain decoding on a backend."""

    tie_margin: float  # greedy: verify rows with a smaller top-2 logit lead are recomputed (0: no guard)
    caveats: tuple[str, ...]  # why outputs can differ from plain decoding; empty: exact (see the module doc)


def precision_caveats(precision: dict | None) -> list[str]:
    """Why a bundle's verify calls are not interchangeable with one-token steps (none for float weights + KV)."""
    if precision is None:
        return []
    weights, kv = precision.get("weights", "fp32"), precision.get("kv") or "fp32"
    caveats = []
    if weights not in FLOAT_WEIGHTS:
        unknown = f"{weights} weights (verify calls were not measured against one-token steps)"
        caveats.append(PRECISION_CAVEATS.get(weights, unknown))
    if kv != "fp32":
        measured = f": logits differ by up to ~{KV_DISCREPANCY[kv]:g}" if kv in KV_DISCREPANCY else ""
        caveats.append(f"a {kv} KV cache (a row a multi-token call writes can round to another {kv} value{measured})")
    return caveats


def cache_caveats(backend) -> list[str]:
    """Why a backend's KV policy makes a verify call see other context than plain decoding."""
    paging, caveats = getattr(backend, "paging", None), []
    if paging is not None and paging.window > 0:
        caveats.append("--window (a verify call attends the window as of its first token)")
    if paging is not None and paging.predicted_pages > 0:
        caveats.append("--predicted-pages (pages are picked by the previous call's last query)")
    if isinstance(getattr(backend, "cache", None), WindowedKVCache):
        caveats.append("sliding-window layers (they keep only recent rows, so a greedy near-tie is not replayed)")
    if getattr(backend, "retention", None) is not None:
        caveats.append("--retention (the budget acts once per verify call, not once per token)")
    return caveats


def exactness(backend) -> Exactness:
    """The greedy tie guard and the caveats for `backend` (module doc: what is guaranteed)."""
    caveats = tuple(precision_caveats(getattr(backend, "precision", None)) + cache_caveats(backend))
    return Exactness(0.0 if caveats else FLOAT_TIE_MARGIN, caveats)


def exactness_note(backend, sampler: Sampler, k: int) -> str | None:
    """The one stderr line for --speculative K where it is not exact; None where it is."""
    caveats = exactness(backend).caveats
    if not k or not caveats:
        return None
    if sampler.greedy:
        differs = "greedy output can differ from plain decoding's"
    else:
        differs = "sampled tokens follow plain decoding's distribution only approximately"
    return f"note: --speculative {k} is not exact here because of {'; '.join(caveats)}: {differs} (docs/benchmarks.md)"


def accept(sampler: Sampler, token: int, target: np.ndarray, proposal: np.ndarray | None) -> tuple[bool, int]:
    """The acceptance rule: (accepted, token to emit). On rejection the token comes from the residual.
    `proposal` None: a deterministic guess (q one-hot at `token`)."""
    if sampler.greedy:
        best = int(np.argmax(target))
        return best == token, best
    q = 1.0 if proposal is None else proposal[token]
    if sampler.rng.next_double() * q < target[token]:  # u < p/q without dividing by q
        return True, token
    if proposal is None:
        proposal = np.zeros_like(target)
        proposal[token] = 1.0
    residual = np.maximum(target - proposal, 0.0)
    total = residual.sum()
    if total <= 0:  # p == q: rejection has probability 0; guard rounding
        return True, token
    return False, sampler.draw(residual / total)


def top2_margin(logits: np.ndarray) -> float:
    """How far the largest logit leads the runner-up (0 on a tie)."""
    top = np.partition(np.asarray(logits).reshape(-1), -2)[-2:]
    return float(top[1] - top[0])


DRAFTERS = ("mtp", "ngram")


def check_speculative(k: int, n_mtp: int, drafter: str = "mtp") -> None:
    if k < 0:
        raise OmniCoderError(f"--speculative must be >= 0, got {k}")
    if drafter not in DRAFTERS:
        raise OmniCoderError(f"--draft {drafter!r} is unknown; use one of {', '.join(DRAFTERS)}")
    if drafter == "mtp" and k > n_mtp:
        hint = "use --draft ngram" if n_mtp == 0 else f"use at most {n_mtp} or --draft ngram"
        raise OmniCoderError(f"--speculative {k} needs {k} MTP heads but the model has {n_mtp}; {hint}")


def default_drafter(n_mtp: int) -> str:
    """The model's MTP heads where it has some, prompt lookup otherwise."""
    return "mtp" if n_mtp else "ngram"


class Speculation:
    """The decode loop's strategy: up to `k` drafts per call from `drafter` ("mtp" or "ngram"; module doc).

    tie_margin: the greedy guard; None takes `exactness(backend)`'s, 0 turns it off (sampling never uses it)."""

    def __init__(
        self,
        backend: SpeculativeBackend,
        sampler: Sampler,
        k: int,
        tie_margin: float | None = None,
        drafter: str | None = None,
    ):
        self.drafter = drafter or default_drafter(backend.n_mtp)
        check_speculative(k, backend.n_mtp, self.drafter)
        if tie_margin is None:
            tie_margin = exactness(backend).tie_margin
        self.k, self.tie_margin = k, tie_margin if sampler.greedy else 0

    def make_drafter(self) -> Drafter:
        return MtpDrafter() if self.drafter == "mtp" else NgramDrafter(max_draft=self.k)

    def tokens(self, run: Run) -> Iterator[int]:
        return _Verifier(run, self.k, self.tie_margin, self.make_drafter()).tokens()


class _Verifier:
    """One run's verify calls, and how much of the cache plain decoding would share (`clean`)."""

    def __init__(self, run: Run, k: int, tie_margin: float, drafter: Drafter) -> None:
        self.run, self.backend, self.k, self.tie_margin, self.drafter = run, run.backend, k, tie_margin, drafter
        self.clean = run.first + len(run.prompt)  # cached rows below this were computed as plain decoding does

    def tokens(self) -> Iterator[int]:
        heads = None  # no MTP drafts until a verify call returns the heads' logits
        while True:
            logits, heads, pending = yield from self.call(heads)
            yield self.run.sampler.sample(logits) if pending is None else pending

    def trusted(self, row_position: int, logits: np.ndarray) -> bool:
        """Whether a row decides its next token as plain decoding would (the greedy tie guard)."""
        return row_position < self.clean or not self.tie_margin or top2_margin(logits) >= self.tie_margin

    def call(self, heads: np.ndarray | None):
        """Verify the last token and the drafter's guesses, yielding the accepted drafts; returns the logits and
        MTP heads to continue from and a token decided by a rejection (or None)."""
        run, backend = self.run, self.backend
        room = max(0, min(self.k, run.max_new_tokens - len(run.out), run.context - backend.cache_length - 1))
        drafts: list[Proposal] = self.drafter.propose(run.prompt + run.out, heads, room, run.sampler) if room else []
        base = backend.cache_length
        ids = [run.out[-1]] + [d for d, _ in drafts]
        logits, mtp = backend.verify(ids, list(range(base, base + len(ids))))
        run.stats.model_calls += 1
        run.stats.draft_tokens += len(drafts)
        if len(ids) == 1 and base == self.clean:  # a one-token call on a clean cache: plain decoding's own
            self.clean += 1
        kept, pending = 0, None
        for i in range(len(ids)):
            if not self.trusted(base + i, logits[i]):
                self.drafter.observe(len(drafts), kept)
                backend.truncate(base + 1 + kept)
                return (*self.replay(base + 1 + kept), None)
            if i == len(drafts):
                break
            token, proposal = drafts[i]
            ok, chosen = accept(run.sampler, token, run.sampler.probabilities(logits[i]), proposal)
            if not ok:
                pending = chosen
                break
            kept += 1
            run.stats.accepted_tokens += 1
            try:
                yield token
            except GeneratorExit:  # generation stopped at this draft: the cache keeps the rows verified up to it
                backend.truncate(base + 1 + kept)
                raise
        self.drafter.observe(len(drafts), kept)
        backend.truncate(base + 1 + kept)
        return logits[kept], mtp[kept], pending

    def replay(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Recompute the cache from the last clean row to `upto` one token per call, as plain decoding did; the
        last row's logits and MTP logits (plain decoding's own)."""
        tokens, first = self.run.prompt + self.run.out, self.run.first  # the token at each cached position
        self.backend.truncate(self.clean)
        for position in range(self.clean, upto - 1):
            self.backend.step([tokens[position - first]], [position])
        logits, mtp = self.backend.verify([tokens[upto - 1 - first]], [upto - 1])
        self.run.stats.model_calls += upto - self.clean
        self.clean = upto
        return logits[0], mtp[0]
