"""One error type for bad user input, and the CLI wrapper that turns it into a one-line message.

Torch-free: the runtimes use the same wrapper.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


class OmniCoderError(Exception):
    """A problem with the user's input: the message names it and, where possible, the fix."""


def one_line(text: object, limit: int = 2000) -> str:
    """`text` on one line, at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def cli_main(func: F) -> F:
    """Run a CLI entry point: OmniCoderError and Ctrl-C become one line on stderr and a non-zero exit.

    Usage errors (argparse's SystemExit) are returned as the exit code, so `main(argv)` returns in-process too.
    What the machine refuses (out of memory, a full disk, a permission) is one line as well; anything else is a
    bug of ours and keeps its traceback. See docs/bad_input.md.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = func(*args, **kwargs)
        except OmniCoderError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                return exc.code or 0
            print(f"error: {one_line(exc.code)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
        except MemoryError:
            print("error: out of memory; ask for less (context, budget, model size)", file=sys.stderr)
            return 2
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"error: {one_line(exc.strerror or exc)}{where}", file=sys.stderr)
            return 2
        return 0 if code is None else code

    return wrapper  # type: ignore[return-value]
