"""Atomic output: build a directory under a temporary name next to its target, then rename it into
place, so an interrupted job never leaves a half-written model or bundle. Torch-free.

Temporary names carry the writer's process id (`.NAME.tmp-PID-XXXX`, `.NAME.old-PID`), so the next writer of
the same target removes what a killed one left behind (and puts back an old copy a kill caught mid-swap).
A `replacement_guard` lets a caller refuse, at the moment of the swap, to replace what is there.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from omnicoder.errors import OmniCoderError

_GUARD: contextvars.ContextVar[Callable[[Path], None] | None] = contextvars.ContextVar("replace_guard", default=None)
LEGACY_TMP_AGE_S = 24 * 3600  # temp folders written before they carried a pid: removed once this old


@contextlib.contextmanager
def replacement_guard(check: Callable[[Path], None]) -> Iterator[None]:
    """While active, `atomic_directory` calls `check(target)` right before it replaces an existing target."""
    token = _GUARD.set(check)
    try:
        yield
    finally:
        _GUARD.reset(token)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove the temporary siblings of `target` that dead writers left; an old copy is put back when the
    target itself is missing. Returns what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)(-[^/]*)?$")
    legacy = re.compile(rf"^\.{re.escape(target.name)}\.tmp-[a-z0-9_]+$")
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        match = pattern.match(path.name)
        if match and _alive(int(match.group(2))):
            continue
        if not match and not (legacy.match(path.name) and _older_than(path, LEGACY_TMP_AGE_S)):
            continue
        if match and match.group(1) == "old" and not target.exists():
            with contextlib.suppress(OSError):  # a kill between the two renames: the old copy goes back
                os.rename(path, target)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target`, on error it is removed.

    An existing target that is not a directory is never replaced."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise OmniCoderError(f"{target} exists and is not a directory; it was left as it was")
    clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should read like any new directory
    try:
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create private files
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        old = None
        if target.exists() or target.is_symlink():
            guard = _GUARD.get()
            if guard is not None:
                guard(target)
            if not target.is_dir():
                raise OmniCoderError(f"{target} exists and is not a directory; it was left as it was")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file via a temporary sibling and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
