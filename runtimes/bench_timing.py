"""Prefill and decode throughput of any decode-step backend (ONNX now, ExecuTorch later). Torch-free.

Warm-up first (the first calls allocate buffers and pick kernels), then `repeats` rounds of: empty the cache,
prefill `prefill_tokens` (timed as a whole), decode `decode_steps` single tokens (each step timed). Prefill
tok/s is the median over rounds; decode tok/s is 1 / the median step time over all rounds' steps. Medians
ignore the occasional preempted step on a shared machine; p10/p90 of the step times record the spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from omnicoder.runtimes.bench_result import SpeculativeSpeed, Speed
from omnicoder.runtimes.decode_loop import StepBackend

from omnicoder.errors import OmniCoderError


@dataclass
class BenchSettings:
    threads: int = 1
    prefill_tokens: int = 64
    decode_steps: int = 48
    repeats: int = 5
    warmup_steps: int = 8
    calibrate: bool = False  # time the calibration probe each round; floors are then ratios (bench_calibration)

    def validate(self, context_length: int) -> BenchSettings:
        for name in ("prefill_tokens", "decode_steps", "repeats"):
            if getattr(self, name) < 1:
                raise OmniCoderError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0 or self.warmup_steps < 0:
            raise OmniCoderError("--threads and --warmup-steps must be >= 0")
        needed = self.prefill_tokens + max(self.decode_steps, self.warmup_steps)
        if needed > context_length:
            raise OmniCoderError(
                f"--prefill-tokens {self.prefill_tokens} + {max(self.decode_steps, self.warmup_steps)} decode steps "
                f"exceed the bundle's context ({context_length}); lower --prefill-tokens or --decode-steps"
            )
        return self


def tokens(count: int, vocab: int, seed: int) -> list[int]:
    """Deterministic ids in the byte range (every OmniCoder vocab starts with the 256 bytes)."""
    return np.random.default_rng(seed).integers(0, min(vocab, 256), count).tolist()


def warm_up(backend: StepBackend, settings: BenchSettings, vocab: int) -> None:
    """One prefill and `warmup_steps` decode steps, untimed."""
    prompt = tokens(settings.prefill_tokens, vocab, 0)
    backend.reset()
    backend.step(prompt, list(range(len(prompt))))
    for i, token in enumerate(tokens(settings.warmup_steps, vocab, 1)):
        backend.step([token], [len(prompt) + i])


def measure_speculative(backend: StepBackend, vocab: int, context: int, max_draft: int = 8) -> SpeculativeSpeed | None:
    """Plain greedy vs n-gram speculative decoding of a prompt that repeats an 8-token motif (the output tends to
    continue it, as code edits reuse their input); None when the bundle's context is too short."""
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams
    from omnicoder.runtimes.speculative import Speculation

    prompt = tokens(8, vocab, 7) * 4
    steps = min(64, context - len(prompt) - max_draft)
    if steps < 16:
        return None
    greedy = Sampler(SamplingParams(temperature=0))
    plain_ids, plain = generate_ids(backend, prompt, steps, greedy, -1)
    strategy = Speculation(backend, greedy, max_draft, drafter="ngram")
    ids, spec = generate_ids(backend, prompt, steps, greedy, -1, None, strategy)
    return SpeculativeSpeed(
        drafter="ngram",
        max_draft=max_draft,
        generated=len(ids),
        plain_decode_tok_s=round(plain.decode_tok_s, 1),
        decode_tok_s=round(spec.decode_tok_s, 1),
        tokens_per_call=round(len(ids) / max(spec.model_calls, 1), 2),
        acceptance_rate=round(spec.acceptance_rate, 3),
        same_tokens=ids == plain_ids,
    )


def measure(
    backend: StepBackend, settings: BenchSettings, vocab: int, before_round: Callable[[], None] | None = None
) -> Speed:
    """Time `repeats` rounds of prefill + decode (call warm_up first); `before_round` (the calibration probe)
    runs at the start of each round, so both see the same moments of a shared machine."""
    prompt = tokens(settings.prefill_tokens, vocab, 0)
    positions = list(range(len(prompt)))
    prefill: list[float] = []
    steps: list[float] = []
    for round_ in range(settings.repeats):
        if before_round is not None:
            before_round()
        backend.reset()
        start = time.perf_counter()
        backend.step(prompt, positions)
        prefill.append(len(prompt) / (time.perf_counter() - start))
        for i, token in enumerate(tokens(settings.decode_steps, vocab, 2 + round_)):
            start = time.perf_counter()
            backend.step([token], [len(prompt) + i])
            steps.append(time.perf_counter() - start)
    steps.sort()
    tenth = max(len(steps) // 10, 1)
    return Speed(
        **{name: value for name, value in asdict(settings).items() if name != "calibrate"},
        prefill_tok_s=round(statistics.median(prefill), 1),
        decode_tok_s=round(1 / statistics.median(steps), 1),
        decode_p10_tok_s=round(1 / steps[tenth - 1], 1),
        decode_p90_tok_s=round(1 / steps[-tenth], 1),
        prefill_samples=[round(value, 1) for value in prefill],
    )
