"""Argument parsing shared by all CLIs: usage errors print one line and exit 2. Torch-free."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from omnicoder.errors import OmniCoderError

MAX_COUNT = 1 << 31  # tokens, steps, windows: more than any context
MAX_THREADS = max(16, 4 * (os.cpu_count() or 1))  # more only oversubscribes the cores (and spins)
MAX_MB = float(1 << 30)  # a budget in MiB: 1 PiB
MAX_PROMPT_BYTES = 64 << 20


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())[:300]} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text[:40]!r}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with `low_open`); NaN and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 40 else math.nan
        except ValueError:
            value = math.nan
        inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
        if not inside:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {text[:40]!r}")
        return value

    parse.__name__ = "number"
    return parse


COUNT = int_in(0, MAX_COUNT)
THREADS = int_in(0, MAX_THREADS)
MEGABYTES = float_in(0.0, MAX_MB)
TOKENS = int_in(1, MAX_COUNT)  # a token count (--context)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The generation flags every runner shares, with the same meaning everywhere."""
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from this file instead")
    p.add_argument("--max-new-tokens", type=COUNT, default=128)
    p.add_argument(
        "--speculative",
        type=int_in(0, 64),
        default=0,
        metavar="K",
        help="draft up to K tokens per call (--draft), verified in one call (0: off); greedy output equals plain "
        "decoding's only with fp32/fp16 weights and an fp32 KV cache",
    )
    p.add_argument(
        "--draft",
        choices=("mtp", "ngram"),
        help="--speculative's drafter: the model's MTP heads, or prompt lookup (n-grams of the prompt and the "
        "output; any model, best where the answer reuses the input). Default: mtp when the model has MTP heads",
    )
    p.add_argument("--temperature", type=float_in(0.0, 1e6), default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=COUNT, default=0, help="0 means no limit")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=0.95)
    p.add_argument("--seed", type=int_in(-(1 << 63), (1 << 64) - 1), default=0)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from --prompt or --prompt-file; it must be non-empty, valid UTF-8 text."""
    if args.prompt_file:
        from omnicoder.runtimes.input_files import read_text

        fix = "save the prompt as UTF-8 text (bytes that are not UTF-8 would be re-encoded, not fed as they are)"
        prompt = read_text(args.prompt_file, "--prompt-file", fix, MAX_PROMPT_BYTES)
    else:
        prompt = args.prompt
        if prompt and any("\udc80" <= c <= "\udcff" for c in prompt):  # argv bytes that were not UTF-8
            raise OmniCoderError("--prompt is not valid UTF-8 text; pass UTF-8 (or use --prompt-file)")
    if not prompt:
        raise OmniCoderError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE")
    if args.max_new_tokens < 0:
        raise OmniCoderError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    return prompt
