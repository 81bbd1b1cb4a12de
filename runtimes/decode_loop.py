"""The generation loop every runner shares (PyTorch reference, ONNX, ExecuTorch). Torch-free.

A backend owns the model and its KV cache; the loop owns the prefill and first token, stop ids, the token limit,
the context check, streaming and the stats. The tokens after the first come from the run's `Strategy`:
`PlainDecoding` (one per call) or `runtimes.speculative.Speculation` (MTP drafts verified per call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from omnicoder.runtimes.sampling import Sampler
from omnicoder.runtimes.stats import GenerationStats, peak_rss_mb

from omnicoder.errors import OmniCoderError


class StepBackend(Protocol):
    """A decode-step model with its own KV cache (batch 1)."""

    context_length: int

    def reset(self) -> None:
        """Empty the KV cache."""

    @property
    def cache_length(self) -> int:
        """Tokens currently in the KV cache; the next token's position when nothing was evicted."""

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Run the tokens through the model, append them to the cache, return the last position's logits [V]."""


def check_prompt_fits(backend, prompt_ids: list[int]) -> int:
    """The backend's context, or a one-line error when the prompt is longer."""
    context = backend.context_length
    if len(prompt_ids) > context:
        raise OmniCoderError(
            f"the prompt is {len(prompt_ids)} tokens, longer than the model's context ({context}); shorten it"
        )
    return context


def check_finite(logits: np.ndarray) -> None:
    """The prompt's logits must be numbers: NaN or Inf means corrupt weights (a bundle would emit garbage)."""
    if not np.isfinite(logits).all():
        raise OmniCoderError(
            "the model returned NaN or Inf logits for the prompt: its weights are corrupt; re-export the bundle "
            "from a good checkpoint"
        )


def stop_set(eos_id: int | Iterable[int]) -> frozenset[int]:
    """The ids that end generation: one EOS id, or several (EOS, end of turn, ...)."""
    return frozenset((eos_id,) if isinstance(eos_id, int) else (int(i) for i in eos_id))


@dataclass
class Run:
    """One generation as the loop holds it; what a strategy reads (and the speculative counters it adds)."""

    backend: StepBackend
    sampler: Sampler
    prompt: list[int]  # the tokens fed before the first generated one
    first: int  # the position of prompt[0]
    max_new_tokens: int
    context: int
    stats: GenerationStats
    out: list[int] = field(default_factory=list)


class Strategy(Protocol):
    def tokens(self, run: Run) -> Iterator[int]:
        """The tokens after `run.out[-1]`, one per `next`: the loop appends each to `run.out` (and streams it)
        before asking for the next, and closes the iterator when generation stops."""


class PlainDecoding:
    """One model call per token: the last token in, the next one sampled from its logits."""

    def tokens(self, run: Run) -> Iterator[int]:
        position = run.first + len(run.prompt)
        while True:
            yield run.sampler.sample(run.backend.step([run.out[-1]], [position]))
            position += 1


def generate_ids(
    backend: StepBackend,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | Iterable[int],
    on_token: Callable[[int], None] | None = None,
    strategy: Strategy | None = None,
) -> tuple[list[int], GenerationStats]:
    """Prefill the prompt, then sample up to max_new_tokens; stops at a stop id (`eos_id`: one id or several)
    or when the context is full."""
    check_prompt_fits(backend, prompt_ids)
    backend.reset()
    return continue_ids(backend, prompt_ids, max_new_tokens, sampler, eos_id, on_token, strategy)


def continue_ids(
    backend: StepBackend,
    new_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | Iterable[int],
    on_token: Callable[[int], None] | None = None,
    strategy: Strategy | None = None,
) -> tuple[list[int], GenerationStats]:
    """`generate_ids` after what the backend's KV cache already holds: `new_ids` take the next positions (a chat's
    next turn feeds only its new tokens). Afterwards the cache holds new_ids and the generated tokens fed back:
    all of them after a stop id, all but the last after the token limit or a full context (plain decoding)."""
    if not new_ids:
        raise OmniCoderError("the prompt encodes to no tokens; pass some text")
    stats = GenerationStats(prompt_tokens=len(new_ids), stop_reason="limit")
    run = Run(backend, sampler, list(new_ids), backend.cache_length, max_new_tokens, backend.context_length, stats)
    if max_new_tokens > 0:
        _decode(run, stop_set(eos_id), on_token, strategy or PlainDecoding())
    stats.generated_tokens = len(run.out)
    stats.peak_rss_mb = peak_rss_mb()
    return run.out, stats


def _decode(run: Run, stops: frozenset[int], on_token: Callable[[int], None] | None, strategy: Strategy) -> None:
    """The prefill and its token, then the strategy's tokens until a stop id, the limit or a full context."""
    start = time.perf_counter()
    logits = run.backend.step(run.prompt, list(range(run.first, run.first + len(run.prompt))))
    token = run.sampler.sample(logits)
    now = time.perf_counter()
    run.stats.prefill_seconds, start = now - start, now
    check_finite(logits)
    fed = run.first + len(run.prompt)  # tokens before `token`: the cache length plain decoding has here
    following = strategy.tokens(run)
    try:
        while True:
            if token in stops:
                run.stats.stop_reason = "eos"
                break
            run.out.append(token)
            if on_token is not None:
                on_token(token)
            if fed >= run.context:
                run.stats.stop_reason = "context"
                break
            if len(run.out) >= run.max_new_tokens:
                break
            token, fed = next(following), fed + 1
    finally:
        following.close()  # a strategy rolls back what it verified past the stop
    run.stats.decode_seconds = time.perf_counter() - start if run.out else 0.0


def generate_text(
    backend: StepBackend,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampler: Sampler,
    on_text: Callable[[str], None] | None = None,
    speculative: int = 0,
    draft: str | None = None,
) -> tuple[str, GenerationStats]:
    """Generate a completion of `prompt`, streaming decoded text pieces to on_text.

    speculative > 0 drafts up to that many tokens per call with `draft` ("mtp" or "ngram"; `runtimes.speculative`)."""
    prompt_ids = tokenizer.encode(prompt, add_bos=getattr(tokenizer, "add_bos", True))
    stops = getattr(tokenizer, "stop_ids", [tokenizer.eos_id])
    text, _, stats = decode_text(
        backend, tokenizer, prompt_ids, max_new_tokens, sampler, stops, on_text, speculative, draft=draft
    )
    return text, stats


def decode_text(
    backend: StepBackend,
    tokenizer,
    ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    stops: Iterable[int],
    on_text: Callable[[str], None] | None = None,
    speculative: int = 0,
    fresh: bool = True,
    draft: str | None = None,
) -> tuple[str, list[int], GenerationStats]:
    """`generate_ids` (`continue_ids` unless `fresh`) with the new tokens decoded as they come, each text piece
    streamed to on_text: (text, token ids, stats)."""
    decoder, pieces = tokenizer.incremental_decoder(), []

    def emit(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    strategy = None
    if speculative:
        from omnicoder.runtimes.speculative import Speculation

        strategy = Speculation(backend, sampler, speculative, drafter=draft)
    run = generate_ids if fresh else continue_ids
    out, stats = run(backend, ids, max_new_tokens, sampler, stops, lambda token: emit(decoder.push(token)), strategy)
    emit(decoder.flush())
    return "".join(pieces), out, stats
