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


def cli_main(func: F) -> F:
    """Run a CLI entry point: OmniCoderError and Ctrl-C become one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = func(*args, **kwargs)
        except OmniCoderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
        return 0 if code is None else code

    return wrapper  # type: ignore[return-value]
