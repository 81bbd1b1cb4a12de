"""What the bad-input fuzz tests share: running a console script in-process like a terminal would see it, the
verdict on its outcome, and hypothesis strategies for hostile JSON, bytes and flag values.

An outcome is clean when the tool returned 0, 1 (a budget tool's "does not fit", a bench check) or 2 with
exactly one line on stderr naming the problem; never a Python exception, never a hang (SIGALRM), never a
stdout or stderr write that a real terminal's encoding would refuse. See docs/bad_input.md.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import signal
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

TOTALS: Counter = Counter()  # family -> inputs tried / tracebacks / hangs / unclean, for the slow run's report


class Hang(Exception):
    pass


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    error: str | None = None  # the traceback, when the tool raised
    problems: list[str] = field(default_factory=list)


def _stream(errors: str) -> io.TextIOWrapper:
    """A UTF-8 text stream over bytes with a terminal's error handling (stdout strict, stderr backslashreplace)."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8", errors="replace")


def run_tool(main, argv: list[str], timeout_s: int = 60) -> Outcome:
    """`main(argv)` in-process, with stdout/stderr captured as real UTF-8 streams and an alarm against hangs."""
    out, err = _stream("strict"), _stream("backslashreplace")

    def on_alarm(signum, frame):
        raise Hang(f"no answer within {timeout_s} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout_s)
    code, error = None, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException:  # noqa: BLE001 - every escape is a finding
        error = traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return Outcome(code, _text(out), _text(err), error)


def verdict(outcome: Outcome, allow_fail: bool = False) -> list[str]:
    """What is wrong with an outcome (empty: clean). `allow_fail`: exit 1 is an expected answer of this tool."""
    problems = []
    if outcome.error is not None:
        kind = "hang" if "Hang: " in outcome.error else "traceback"
        problems.append(f"{kind}: {outcome.error.strip().splitlines()[-1]}")
        return problems
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if "Traceback" in outcome.stderr:
        problems.append("a traceback on stderr")
    if outcome.code == 2:
        if len(lines) != 1 or "error:" not in lines[0]:
            problems.append(f"exit 2 without exactly one error line on stderr: {lines[-3:]}")
    elif outcome.code == 1:  # a budget tool's "does not fit", a bench's failed check
        if not allow_fail:
            problems.append("exit 1 from a tool whose failures are exit 2")
    elif outcome.code != 0:
        problems.append(f"exit {outcome.code}")
    return problems


def record(family: str, outcome: Outcome, allow_fail: bool = False) -> list[str]:
    """Count the input under `family` and return its problems."""
    problems = verdict(outcome, allow_fail)
    TOTALS[(family, "tool runs")] += 1
    TOTALS[(family, f"exit {outcome.code}")] += 1
    for problem in problems:
        TOTALS[(family, problem.split(":")[0])] += 1
    return problems


# ---- hostile values ------------------------------------------------------------------------------------------

BIG = [0, -1, 1, 2, 3, 7, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 10**4999]
TEXTS = [
    "",
    " ",
    "x" * 5000,
    "{layer}",
    "{layer}{0}",
    "{layer:>999999999}",
    "{layer.real}",
    "{}",
    "../../x",
    "/etc/passwd",
    "a\\b",
    "\x00",
    "\udcff",
    "\ud83d",
    "é",
    "\u202e",
    "model.onnx",
    "manifest.json",
    "tokenizer.json",
    "fp32",
    "fp16",
    "u8",
    "nf4",
    "int4",
    "shared",
    "present",
    "onnx",
    "coreml",
    "executorch",
    "gqa",
    "mla",
    "mla-latent",
    "float16",
    "uint8",
    "complex128",
    "object",
    "BNSH",
    "hadamard",
    "omnicoder-byte",
    "huggingface",
    "retention",
]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5, 1e-320, 1.5]

hostile_scalar = st.one_of(
    st.integers(min_value=0, max_value=300),  # plausible values, so that some edits pass the schema
    st.sampled_from(TEXTS[10:]),
    st.sampled_from(BIG),
    st.sampled_from(SPECIAL_FLOATS),
    st.sampled_from(TEXTS),
    st.sampled_from([True, False, None]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
hostile_value = st.one_of(
    hostile_scalar,
    st.sampled_from([[], {}, [[[[[]]]]], {"a": {"b": {"c": 1}}}, [1, 2, 3], {"suffix": "", "dtype": "x"}]),
    st.lists(hostile_scalar, max_size=4),
    st.dictionaries(st.sampled_from(["a", "file", "n_layers", "x"]), hostile_scalar, max_size=3),
)


def dumps(document) -> str:
    """JSON text that may carry NaN / Infinity and 5000-digit integers, as a hostile writer would produce."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(document, allow_nan=True)
    finally:
        sys.set_int_max_str_digits(limit)


def _container_paths(document, prefix=()):
    """Every path to a value in a JSON document (keys and indices), the root excluded."""
    stack = [(document, prefix)]
    while stack:
        node, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            yield (*path, key)
            stack.append((child, (*path, key)))


def _parent(document, path: tuple):
    """The container holding `path`'s last key, or None when the path no longer exists."""
    node = document
    for key in path[:-1]:
        if not _holds(node, key):
            return None
        node = node[key]
    return node if isinstance(node, dict) or _holds(node, path[-1]) else None


def _holds(node, key) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)


@st.composite
def mutated_json(draw, document, focus: list[tuple] | None = None):
    """A copy of `document` with one to three edits: a value replaced by a hostile one, a key removed, or an
    unknown key added; paths are drawn from `focus` (the fields that size things) or from the whole tree."""
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        paths = sorted(_container_paths(doc), key=repr)
        if focus and draw(st.booleans()):
            path = draw(st.sampled_from(focus))
        elif paths:
            path = draw(st.sampled_from(paths))
        else:
            break
        parent = _parent(doc, path)
        if parent is None:
            continue
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "replace" or isinstance(parent, list):
            parent[path[-1]] = copy.deepcopy(draw(hostile_value))  # sampled objects are shared
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            key = draw(st.sampled_from(["zz_unknown", "files", "io", "query", "storage"]))
            parent[key] = copy.deepcopy(draw(hostile_value))
    return doc


@st.composite
def mutated_bytes(draw, data: bytes):
    """`data` with a byte flipped, truncated, extended, replaced by junk, or a hostile JSON text."""
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "junk", "special"]))
    if kind == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.sampled_from([0x01, 0x80, 0xFF, 0x20]))]) + data[at + 1 :]
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "junk":
        return draw(st.binary(max_size=256))
    return draw(st.sampled_from(SPECIAL_TEXTS))


SPECIAL_TEXTS = [
    b"",
    b"[" * 100000,
    b"{" * 5000,
    b'{"a": ' + b"9" * 5000 + b"}",
    b'{"a": 1e999}',
    b'{"a": NaN}',
    b'{"a": -Infinity}',
    b"\xef\xbb\xbf{}",
    "{}".encode("utf-16"),
    b'{"a": "\\udcff"}',
    b"\xff\xfe\xfd",
    b"null",
    b"[]",
    b'"text"',
    b"0",
    b'{"format": "omnicoder-bundle"}',
]

NUMBER_TEXTS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-1",
    "-0",
    "0",
    "1",
    "1.5",
    "1e-320",
    "9" * 400,
    "1" * 5000,
    "0x10",
    "1_000",
    "",
    " ",
    "  7 ",
    "٣",
    "1e",
    "--1",
    "2147483648",
    "1000000000000",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "\x00",
    "\udcff",
]


def flag_values():
    """Strings a user might type where a number goes."""
    return st.one_of(
        st.sampled_from(NUMBER_TEXTS),
        st.text(max_size=12),
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


def rehash(bundle: Path) -> None:
    """Rewrite the manifest's sizes and sha256 for the files as they are now (when the manifest still parses)."""
    from omnicoder.runtimes.bundle import sha256_file

    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        files = manifest["files"]
        for name in list(files):
            member = bundle / name
            if member.is_file():
                files[name] = {"sha256": sha256_file(member), "bytes": member.stat().st_size}
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
        return
    (bundle / "manifest.json").write_text(dumps(manifest), encoding="utf-8")


def report_totals(families: list[str]) -> str:
    """The totals of the run, one line per family."""
    lines = []
    for family in families:
        counts = {key: n for (fam, key), n in sorted(TOTALS.items()) if fam == family}
        lines.append(f"{family}: {counts}")
    return "\n".join(lines)
