"""Argument parsing shared by all CLIs: usage errors print one line and exit 2. Torch-free."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from omnicoder.errors import OmniCoderError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The generation flags every runner shares, with the same meaning everywhere."""
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from this file instead")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--speculative",
        type=int,
        default=0,
        metavar="K",
        help="draft K tokens per step with the model's MTP heads and verify them in one call (0: off)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 means no limit")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8", errors="surrogateescape") as handle:
                prompt = handle.read()
        except OSError as exc:
            raise OmniCoderError(f"cannot read --prompt-file {args.prompt_file}: {exc.strerror}") from None
    else:
        prompt = args.prompt
    if not prompt:
        raise OmniCoderError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE")
    if args.max_new_tokens < 0:
        raise OmniCoderError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    return prompt
