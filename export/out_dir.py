"""What `omnicoder-export --out` may replace, checked before the export runs and again at the swap.

- nothing there, or an empty directory: written;
- an OmniCoder bundle holding only its own files, unchanged since export (sizes and sha256 as its manifest
  lists them): replaced, as a re-export always did;
- such a bundle whose files were changed or removed: replaced only with --force;
- anything else (a file, a directory that is not a bundle, a bundle with files it does not list, a symbolic
  link, the current directory or one of its parents, an empty path): refused, and nothing is touched.

The parent must be writable, which is checked by creating and removing a directory there before any weight
is loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omnicoder.runtimes.input_files import read_json

from omnicoder.errors import OmniCoderError

MANIFEST = "manifest.json"


def _refuse(out: str, why: str) -> None:
    raise OmniCoderError(f"--out {out} {why}; nothing was written")


def _bundle_files(path: Path, out: str) -> dict:
    """The `files` of the bundle at `path`, or a refusal when it is not an OmniCoder bundle."""
    if not (path / MANIFEST).is_file():
        _refuse(out, "exists and is not an OmniCoder bundle (no manifest.json); pass a new or empty directory")
    try:
        manifest = read_json(path / MANIFEST, "the manifest of", "pass a new or empty directory as --out")
    except OmniCoderError as exc:
        _refuse(out, f"exists and its manifest.json cannot be read ({exc}); pass a new or empty directory")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != "omnicoder-bundle" or not isinstance(files, dict):
        _refuse(out, "exists and is not an OmniCoder bundle; pass a new or empty directory")
    return files


def _unlisted(path: Path, files: dict) -> list[str]:
    """Paths under `path` that are not the manifest or listed in it (symbolic links count as files)."""
    extra = []
    for parent, dirs, names in os.walk(path, followlinks=False):
        base = Path(parent)
        for name in names + [d for d in dirs if (base / d).is_symlink()]:
            rel = (base / name).relative_to(path).as_posix()
            if rel != MANIFEST and rel not in files:
                extra.append(rel)
    return sorted(extra)


def _changed(path: Path, files: dict) -> list[str]:
    from omnicoder.runtimes.bundle import sha256_file

    changed = []
    for name, entry in files.items():
        member = path / name
        try:
            ok = member.is_file() and not member.is_symlink() and member.stat().st_size == entry.get("bytes")
            ok = ok and sha256_file(member) == entry.get("sha256")
        except (OSError, AttributeError, ValueError):
            ok = False
        if not ok:
            changed.append(name)
    return changed


def check_replaceable(path: Path, out: str, force: bool) -> None:
    """Refuse unless `path` is absent, empty, or a bundle that may be replaced (see the module docstring)."""
    if path.is_symlink():
        _refuse(out, "is a symbolic link; pass the directory itself")
    if not path.exists():
        return
    if not path.is_dir():
        _refuse(out, "exists and is a file, not a bundle directory; pass another --out")
    if not any(path.iterdir()):
        return
    files = _bundle_files(path, out)
    extra = _unlisted(path, files)
    if extra:
        _refuse(out, f"holds files that are not part of its bundle ({', '.join(extra[:3])}); move them first")
    changed = _changed(path, files)
    if changed and not force:
        _refuse(out, f"is a bundle whose files were changed since export ({', '.join(changed[:3])}); pass --force")


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor)


def check_writable(parent: Path, out: str) -> None:
    """The directory the bundle goes into exists or can be created, and takes a new directory."""
    base = _nearest_existing(parent)
    if not base.is_dir():
        _refuse(out, f"cannot be created: {base} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".omnicoder-write-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        _refuse(out, f"cannot be written: {base} refuses a new directory ({exc.strerror or exc})")


def check_out(out: str, force: bool) -> Path:
    """Everything above, before the export loads the model; returns the absolute target path."""
    if not out.strip():
        raise OmniCoderError("--out is empty; pass the bundle directory to write (e.g. --out bundles/my-model)")
    if "\x00" in out or len(out) > 4096:
        raise OmniCoderError("--out is not a usable path; pass the bundle directory to write")
    path = Path(os.path.abspath(out))
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents or path == Path(path.anchor):
        _refuse(out, "is the current directory, one of its parents or the root; pass a directory of its own")
    if any(len(part) > 255 for part in path.parts):
        _refuse(out, "has a path component longer than 255 characters")
    check_replaceable(path, out, force)
    check_writable(path.parent, out)
    return path
