"""The one reader of external files: bundles, sidecars, profiles, model configs and tokenizers. Torch-free.

Every file goes the same way: a regular file (never a FIFO or device that could block) -> at most `limit` bytes
-> strict UTF-8 -> JSON with NaN/Infinity refused, integers within 64 bits, floats finite and nesting bounded ->
its JSON Schema. Each failure is one OmniCoderError that names the file, what is wrong and the fix; nothing here
lets a Python exception through for any content of the file. See docs/bad_input.md.
"""

from __future__ import annotations

import json
import os
import stat
from functools import cache
from pathlib import Path
from typing import Any

from omnicoder.errors import OmniCoderError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MAX_JSON_BYTES = 8 << 20  # manifests, sidecars, profiles, model configs: a few KB in practice
MAX_TOKENIZER_BYTES = 512 << 20  # Hugging Face tokenizer.json files reach tens of MB
MAX_TEXT_BYTES = 64 << 20  # prompts
MAX_DEPTH = 64  # nesting of objects and arrays (our documents need 6)
INT_LIMIT = 1 << 63  # integers must fit a signed 64-bit value (what the Kotlin and Swift apps read)
MAX_NUMBER_CHARS = 64  # characters of one number literal
MAX_MESSAGE = 240  # characters of a quoted value in an error message


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"an integer of {len(text)} digits")
    value = int(text)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _BadNumber(f"the integer {text}, which does not fit 64 bits")
    return value


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"a number of {len(text)} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadNumber(f"the number {text}, which overflows a 64-bit float")
    return value


def _parse_constant(text: str) -> Any:
    raise _BadNumber(f"{text}, which is not a JSON number")


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line of at most `limit` characters, for quoting input in an error message."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_bytes(path: str | Path, what: str, fix: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise OmniCoderError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, ValueError) as exc:
        raise OmniCoderError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}; {fix}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise OmniCoderError(f"{what} {path} is {kind}; {fix}")
    if info.st_size > limit:
        raise OmniCoderError(f"{what} {path} has {info.st_size} bytes, more than the {limit} this reader takes; {fix}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise OmniCoderError(f"cannot read {what} {path}: {exc.strerror or exc}; {fix}") from None
    if len(data) > limit:
        raise OmniCoderError(f"{what} {path} grew past {limit} bytes while it was read; {fix}")
    return data


def decode_utf8(data: bytes, what: str, fix: str) -> str:
    """Strict UTF-8 (no replacement, no surrogates)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OmniCoderError(
            f"{what} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); {fix}"
        ) from None


def _check_tree(document: Any, what: str, fix: str) -> None:
    """Nesting within MAX_DEPTH and every string (keys too) encodable as UTF-8 (an unpaired \\uD800-\\uDFFF escape
    is not), walked without recursion."""
    stack = [(document, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise OmniCoderError(f"{what} holds a string with an unpaired \\u surrogate escape; {fix}") from None
        elif isinstance(node, dict | list):
            if level > MAX_DEPTH:
                raise OmniCoderError(f"{what} nests objects or arrays too deeply (over {MAX_DEPTH} levels); {fix}")
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children if isinstance(child, str | dict | list))


def parse_json(text: str, what: str, fix: str, check_depth: bool = True) -> Any:
    """JSON text -> Python values, refusing NaN/Infinity, integers beyond 64 bits, overflowing floats and deep
    nesting, and (`check_depth`: a walk of the result) unpaired surrogate escapes; the parser itself stops at
    Python's recursion limit."""
    try:
        document = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise OmniCoderError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {fix}"
        ) from None
    except _BadNumber as exc:
        raise OmniCoderError(f"{what} holds {shorten(str(exc))}; {fix}") from None
    except RecursionError:
        raise OmniCoderError(f"{what} nests objects or arrays too deeply (over {MAX_DEPTH} levels); {fix}") from None
    if check_depth:
        _check_tree(document, what, fix)
    return document


@cache
def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


def validate(document: Any, schema_name: str, what: str, fix: str = "") -> None:
    """Raise OmniCoderError naming the first schema violation of `document` (and the fix, when given)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        err = errors[0]
        where = "/".join(shorten(str(p), 60) for p in err.absolute_path) or "(root)"
        tail = f"; {fix}" if fix else ""
        raise OmniCoderError(f"{what} is invalid at {where}: {shorten(err.message)}{tail}")


def read_json(
    path: str | Path,
    what: str,
    fix: str,
    schema: str | None = None,
    limit: int = MAX_JSON_BYTES,
    check_depth: bool = True,
) -> Any:
    """A JSON file through every step: bytes, size limit, UTF-8, JSON, and the schema when given."""
    label = f"{what} {path}"
    document = parse_json(decode_utf8(read_bytes(path, what, fix, limit), label, fix), label, fix, check_depth)
    if schema is not None:
        validate(document, schema, label, fix)
    return document


def read_text(path: str | Path, what: str, fix: str, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file of at most `limit` bytes."""
    return decode_utf8(read_bytes(path, what, fix, limit), f"{what} {path}", fix)
