"""The text files of a model directory read through runtimes/input_files.py before the loaders see them:
a Hugging Face config.json (schema of the fields hf: import reads) and tokenizer.json (UTF-8, JSON, loadable).
Torch-free. A corrupt file is one line naming it, never a decode error or a parser's exception."""

from __future__ import annotations

from pathlib import Path

from omnicoder.errors import OmniCoderError
from omnicoder.runtimes.input_files import MAX_TOKENIZER_BYTES, parse_json, read_json, read_text

HF_FIX = "fix it or re-save the checkpoint with save_pretrained"


def check_hf_directory(path: Path) -> None:
    """config.json and (when present) tokenizer.json of an `hf:DIR` checkpoint are readable and well-typed."""
    if (path / "config.json").is_file():
        read_json(path / "config.json", "Hugging Face config", HF_FIX, "hf_config.schema.json")
    if (path / "tokenizer.json").exists():
        read_tokenizer_text(path / "tokenizer.json", HF_FIX)


def read_tokenizer_text(path: Path, fix: str) -> str:
    """tokenizer.json as text: within the size limit, UTF-8, JSON, and loadable by its library."""
    text = read_text(path, "tokenizer", fix, MAX_TOKENIZER_BYTES)
    spec = parse_json(text, f"tokenizer {path}", fix, check_depth=False)
    if isinstance(spec, dict) and spec.get("type") == "omnicoder-byte":
        special = spec.get("special_tokens")
        values = (
            [spec.get("vocab_size"), *(special.get(k) for k in ("bos", "eos", "pad"))]
            if isinstance(special, dict)
            else []
        )
        if len(values) != 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 24 for v in values
        ):
            raise OmniCoderError(
                f"tokenizer {path} is a byte tokenizer without a valid vocab_size and special ids; {fix}"
            )
        return text
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return text  # the tokenizer's own loader names the missing package
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library reports a malformed file as a bare Exception
        raise OmniCoderError(f"tokenizer {path} cannot be loaded ({' '.join(str(exc).split())[:200]}); {fix}") from None
    return text


def load_directory_tokenizer(model_dir: Path, bos_id: int, eos_id: int):
    """The tokenizer.json of a model directory (non-byte models), read through read_tokenizer_text."""
    from omnicoder.tokenizer import tokenizer_from_json

    text = read_tokenizer_text(model_dir / "tokenizer.json", "re-save the model with its tokenizer.json")
    return tokenizer_from_json(text, bos_id=bos_id, eos_id=eos_id)


def check_model_out(out: str, will_write: set[str]) -> None:
    """A model directory to (re)write: absent, empty, or holding only files that will be written again (so
    replacing it atomically loses nothing); never a file, a link, the current directory or one of its parents."""
    import os

    if not out.strip() or "\x00" in out:
        raise OmniCoderError("--out is empty; pass the model directory to write")
    path = Path(os.path.abspath(out))
    if path == Path.cwd() or path in Path.cwd().parents or path.is_symlink():
        raise OmniCoderError(f"--out {out} is the current directory, a parent or a link; pass a directory of its own")
    if not path.exists():
        return
    if not path.is_dir():
        raise OmniCoderError(f"--out {out} exists and is a file; pass a directory (nothing was written)")
    others = sorted(p.name for p in path.iterdir() if p.name not in will_write or not p.is_file())
    if others:
        raise OmniCoderError(
            f"--out {out} holds files this command would not write again ({', '.join(others[:3])}); "
            "pass a new or empty directory, or move them (nothing was written)"
        )
