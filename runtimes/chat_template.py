"""Render a model's chat template (Jinja, as Hugging Face checkpoints and GGUF files ship it) in a sandbox.
Torch-free; jinja2 is imported only here, when --chat is used.

The environment is Hugging Face's `apply_chat_template` one: an immutable sandbox with trim_blocks and lstrip_blocks,
loop controls, `{% generation %}` blocks, the `tojson` filter and the globals `raise_exception` and
`strftime_now`; the template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and
`documents` (None). A template is data from the bundle, not code: any access to an unsafe attribute (`__class__`,
a list's `append`, ...) fails at once instead of rendering as empty, and every failure is one OmniCoderError line.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from typing import Any

from omnicoder.errors import OmniCoderError

MAX_OUTPUT_CHARS = 16 << 20  # a rendered conversation longer than this is a runaway template


class TemplateRefused(Exception):
    """raise_exception() called by the template (it refuses the conversation, e.g. roles out of order)."""


def require_jinja() -> None:
    """A one-line error when jinja2 is not installed (checked before a bundle is loaded)."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise OmniCoderError("--chat renders the model's chat template with jinja2; pip install jinja2") from None


def _raise_exception(message: str) -> None:
    raise TemplateRefused(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@cache
def _environment():
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Sandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj: Any, attribute: str):
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} object is unsafe")

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser) -> list[nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return env


@cache
def compile_template(source: str):
    """The compiled template, or a one-line error for one that is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    require_jinja()
    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise OmniCoderError(f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message})") from None


def render_chat(
    source: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """The conversation as the template writes it (with the assistant's header when add_generation_prompt)."""
    from jinja2.exceptions import SecurityError, TemplateError

    template = compile_template(source)
    variables = {
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "tools": None,
        "documents": None,
    }
    pieces, size = [], 0
    try:
        for piece in template.generate(**variables):
            pieces.append(piece)
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise OmniCoderError(f"the chat template wrote more than {MAX_OUTPUT_CHARS} characters; it runs away")
    except TemplateRefused as exc:
        raise OmniCoderError(f"the chat template refused the conversation: {exc}") from None
    except SecurityError as exc:
        raise OmniCoderError(f"the chat template was stopped by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise OmniCoderError(f"the chat template failed: {exc}") from None
    except OmniCoderError:
        raise
    except Exception as exc:  # the template is data: whatever it does wrong is bad input, not our bug
        raise OmniCoderError(f"the chat template failed: {type(exc).__name__}: {exc}") from None
    return "".join(pieces)
