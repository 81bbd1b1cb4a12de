"""`omnicoder-generate`: KV-cached reference generation in PyTorch.

Stdout carries exactly the generated text (no prompt echo); the stats line goes to stderr.
"""

from __future__ import annotations

import sys

from omnicoder.cliutil import THREADS, ArgumentParser, add_sampling_args, read_prompt
from omnicoder.errors import cli_main
from omnicoder.runtimes.chat_cli import add_chat_args, chat_prompt, chat_requested, print_stats, run_chat, write
from omnicoder.runtimes.sampling import Sampler, SamplingParams


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-generate", description=__doc__)
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded model), a model directory, or hf:DIR (a Hugging Face checkpoint)",
    )
    add_sampling_args(p)
    p.add_argument("--threads", type=THREADS, default=0, help="torch intra-op threads (0: torch's default)")
    add_chat_args(p)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chat = chat_requested(args)
    prompt = chat_prompt(args) if chat else read_prompt(args)
    sampler = Sampler(SamplingParams(args.temperature, args.top_k, args.top_p, args.seed))
    import torch

    from omnicoder.generate import TorchBackend
    from omnicoder.loading import load_model_and_tokenizer
    from omnicoder.runtimes.decode_loop import generate_text

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    backend = TorchBackend(model)
    if chat:
        return run_chat(args, prompt, backend, tokenizer, sampler, "model")
    _, stats = generate_text(
        backend, tokenizer, prompt, args.max_new_tokens, sampler, write, args.speculative, args.draft
    )
    print_stats(args, stats)  # no --json here: a newline on a terminal keeps piped output exactly the text
    return 0


if __name__ == "__main__":
    sys.exit(main())
