"""`--chat` and `--system` for every runner (ONNX, ExecuTorch, the PyTorch reference). Torch-free.

- `--chat --prompt TEXT` (or `--prompt-file`): one user turn, rendered with the model's chat template; stdout
  carries exactly the reply, as for plain generation (stats on stderr, or JSON on stdout's last line with --json).
- `--chat` without a prompt: an interactive chat, one user turn per line of stdin (an empty line or EOF ends).
  The KV cache is kept between turns: a turn feeds only its new tokens. Each reply is followed by a newline on
  stdout (and with --json by that turn's stats as one JSON line); each turn's stats line goes to stderr.

Generation stops at any of the tokenizer's stop ids (EOS, end of turn). See docs/chat.md.
"""

from __future__ import annotations

import argparse
import sys

from omnicoder.runtimes.sampling import Sampler

from omnicoder.errors import OmniCoderError

NO_TEMPLATE = {
    "bundle": "this bundle has no chat template; re-export it with this omnicoder from a checkpoint that ships one "
    "(hf:DIR with chat_template.jinja or tokenizer_config.json's chat_template, or a GGUF file with "
    "tokenizer.chat_template), or drop --chat and write the template into --prompt",
    "model": "this model has no chat template (hf:DIR needs chat_template.jinja or tokenizer_config.json's "
    "chat_template, a GGUF file tokenizer.chat_template); drop --chat and write the template into --prompt",
    "byte": "this is a byte-level completion model: it has no chat template; drop --chat",
}


def add_chat_args(p: argparse.ArgumentParser) -> None:
    chat = p.add_argument_group("chat (see docs/chat.md)")
    chat.add_argument(
        "--chat",
        action="store_true",
        help="render the prompt as a user turn with the model's chat template; without --prompt: an interactive "
        "chat on stdin, one turn per line (an empty line or EOF ends), keeping the KV cache between turns",
    )
    chat.add_argument("--system", metavar="TEXT", help="--chat: the system message")


def interactive(args: argparse.Namespace) -> bool:
    return args.prompt is None and args.prompt_file is None


def chat_requested(args: argparse.Namespace) -> bool:
    """Whether --chat is on, after checking the chat flags against the others (one-line errors, before any load)."""
    if not getattr(args, "chat", False):
        if getattr(args, "system", None) is not None:
            raise OmniCoderError("--system applies with --chat; add --chat")
        return False
    if getattr(args, "score", None):
        raise OmniCoderError("--chat and --score are exclusive; drop one")
    if interactive(args) and getattr(args, "speculative", 0):
        raise OmniCoderError("--speculative drafts only one turn; use it with --chat --prompt TEXT, not interactively")
    if args.system is not None and any("\udc80" <= c <= "\udcff" for c in args.system):
        raise OmniCoderError("--system is not valid UTF-8 text; pass UTF-8")
    from omnicoder.runtimes.chat_template import require_jinja

    require_jinja()
    return True


def write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def print_stats(args: argparse.Namespace, stats) -> None:
    """After a one-shot reply: the stats as JSON on stdout's last line (--json; else a newline on a terminal), and
    the stats line on stderr."""
    if getattr(args, "json", False):
        sys.stdout.write("\n" + stats.json() + "\n")
    elif sys.stdout.isatty():
        sys.stdout.write("\n")
    print(stats.line(), file=sys.stderr)


def _read_turn() -> str | None:
    """The next line of stdin without its newline; None at EOF or an empty line."""
    if sys.stdin.isatty():
        sys.stderr.write("> ")
        sys.stderr.flush()
    try:
        line = sys.stdin.readline()
    except UnicodeDecodeError:
        raise OmniCoderError("stdin is not valid UTF-8 text; type or pipe UTF-8") from None
    line = line.rstrip("\r\n")
    return line if line.strip() else None


def chat_prompt(args: argparse.Namespace) -> str | None:
    """The one-shot turn (--prompt / --prompt-file, checked like a plain prompt), None for an interactive chat."""
    from omnicoder.cliutil import read_prompt

    return None if interactive(args) else read_prompt(args)


def run_chat(args: argparse.Namespace, prompt: str | None, backend, tokenizer, sampler: Sampler, where: str) -> int:
    """One-shot (`prompt`) or interactive (None) chat, module doc; `where`: "bundle" or "model" (for messages)."""
    from omnicoder.runtimes.chat import ChatSession

    from omnicoder.tokenizer import ByteTokenizer

    missing = NO_TEMPLATE["byte" if isinstance(tokenizer, ByteTokenizer) else where]
    session = ChatSession(backend, tokenizer, args.system, missing)
    speculative = getattr(args, "speculative", 0) or 0
    if prompt is not None:
        draft = getattr(args, "draft", None)
        _, stats = session.turn(prompt, args.max_new_tokens, sampler, write, speculative, draft)
        print_stats(args, stats)
        return 0
    while (user := _read_turn()) is not None:
        _, stats = session.turn(user, args.max_new_tokens, sampler, on_text=write)
        sys.stdout.write("\n" + (stats.json() + "\n" if getattr(args, "json", False) else ""))
        sys.stdout.flush()
        print(stats.line(), file=sys.stderr)
    return 0
