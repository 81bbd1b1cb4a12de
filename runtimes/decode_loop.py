"""The generation loop every runner shares (PyTorch reference, ONNX, ExecuTorch). Torch-free.

A backend owns the model and its KV cache; the loop owns prefill/decode order, sampling, stopping,
streaming and timing, so all runners behave the same for the same flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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


def generate_ids(
    backend: StepBackend,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | Iterable[int],
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], GenerationStats]:
    """Prefill the prompt, then sample up to max_new_tokens; stops at a stop id (`eos_id`: one id or several)
    or when the context is full."""
    check_prompt_fits(backend, prompt_ids)
    backend.reset()
    return continue_ids(backend, prompt_ids, max_new_tokens, sampler, eos_id, on_token)


def continue_ids(
    backend: StepBackend,
    new_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | Iterable[int],
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], GenerationStats]:
    """`generate_ids` after what the backend's KV cache already holds: `new_ids` take the next positions (a chat's
    next turn feeds only its new tokens). Afterwards the cache holds new_ids and the generated tokens fed back:
    all of them after a stop id, all but the last after the token limit or a full context."""
    if not new_ids:
        raise OmniCoderError("the prompt encodes to no tokens; pass some text")
    context = backend.context_length
    stops = stop_set(eos_id)
    stats = GenerationStats(prompt_tokens=len(new_ids), stop_reason="limit")
    out: list[int] = []
    first = backend.cache_length
    ids, positions = list(new_ids), list(range(first, first + len(new_ids)))
    start = time.perf_counter()
    for step in range(max_new_tokens):
        logits = backend.step(ids, positions)
        token = sampler.sample(logits)
        now = time.perf_counter()
        if step == 0:
            stats.prefill_seconds, start = now - start, now
            check_finite(logits)
        if token in stops:
            stats.stop_reason = "eos"
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        if backend.cache_length >= context:
            stats.stop_reason = "context"
            break
        ids, positions = [token], [positions[-1] + 1]
    stats.decode_seconds = time.perf_counter() - start if out else 0.0
    stats.generated_tokens = len(out)
    stats.peak_rss_mb = peak_rss_mb()
    return out, stats


def generate_text(
    backend: StepBackend,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampler: Sampler,
    on_text: Callable[[str], None] | None = None,
    speculative: int = 0,
) -> tuple[str, GenerationStats]:
    """Generate a completion of `prompt`, streaming decoded text pieces to on_text.

    speculative > 0 drafts that many tokens per step with the MTP heads (`runtimes.speculative`)."""
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []

    def emit(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    prompt_ids = tokenizer.encode(prompt, add_bos=getattr(tokenizer, "add_bos", True))
    stops = getattr(tokenizer, "stop_ids", [tokenizer.eos_id])
    on_token = lambda token: emit(decoder.push(token))  # noqa: E731
    if speculative:
        from omnicoder.runtimes.speculative import generate_ids_speculative

        _, stats = generate_ids_speculative(backend, prompt_ids, max_new_tokens, sampler, stops, speculative, on_token)
    else:
        _, stats = generate_ids(backend, prompt_ids, max_new_tokens, sampler, stops, on_token)
    emit(decoder.flush())
    return "".join(pieces), stats
