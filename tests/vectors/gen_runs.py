"""Vectors of the decode loop (a fake integer-only model) and of good and tampered bundles (see generate.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 1


def dumps(data: object) -> str:
    return json.dumps(data, indent=1, ensure_ascii=True) + "\n"


# ---- the decode loop against a fake model session ---------------------------------------------------------

FAKE_VOCAB = 272


def fake_logits(token: int, position: int, cache_length: int) -> np.ndarray:
    """The fake model of the decode-loop vectors: float32 logits from integers only (exact in every language)."""
    h = (token * 131 + position * 31 + cache_length * 7) % 100003
    return np.array([((h + v * 7919) % 1000) / 100.0 for v in range(FAKE_VOCAB)], dtype=np.float32)


class FakeBackend:
    """A StepBackend whose logits depend on the last token, its position and the cache length after the step."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length
        self.calls: list[list[int]] = []
        self._length = 0

    def reset(self) -> None:
        self._length = 0

    @property
    def cache_length(self) -> int:
        return self._length

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        self.calls.append([len(ids), positions[0]])
        self._length += len(ids)
        return fake_logits(ids[-1], positions[-1], self._length)


def continue_reference(backend, pending: int, prompt: list[int], max_new: int, sampler, eos_id: int, context: int):
    """The apps' `continue` semantics: the pending (last sampled) token and the new prompt at the next positions."""
    ids = [pending, *prompt]
    position = backend.cache_length
    positions = list(range(position, position + len(ids)))
    out, reason = [], "limit"
    last = pending
    for _ in range(max_new):
        logits = backend.step(ids, positions)
        last = sampler.sample(logits)
        if last == eos_id:
            reason = "eos"
            break
        out.append(last)
        if backend.cache_length >= context:
            reason = "context"
            break
        ids, positions = [last], [positions[-1] + 1]
    return out, reason, last


DECODE_CASES = [
    # name, context, prompt, max_new, (temperature, top_k, top_p, seed), eos, continuation prompt or None
    ("greedy", 64, [256, 100, 101, 102], 12, (0.0, 0, 1.0, 0), 257, None),
    ("sampled", 64, [256, 65, 66], 16, (0.9, 40, 0.95, 5), 257, None),
    ("eos-stop", 64, [256, 7], 20, (0.0, 0, 1.0, 0), 74, None),
    ("context-stop", 12, [256, 1, 2, 3, 4, 5, 6, 7], 20, (0.8, 0, 1.0, 3), 257, None),
    ("continue-greedy", 128, [256, 10, 20, 30], 6, (0.0, 0, 1.0, 0), 257, [40, 50, 60]),
    ("continue-sampled", 128, [256, 11, 21], 8, (1.0, 10, 0.9, 11), 257, [41, 51]),
]


def decode_loop_vectors() -> dict:
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    cases = []
    for name, context, prompt, max_new, params, eos, follow in DECODE_CASES:
        backend = FakeBackend(context)
        sampler = Sampler(SamplingParams(*params))
        out, stats = generate_ids(backend, prompt, max_new, sampler, eos)
        case = {
            "name": name,
            "context": context,
            "vocab": FAKE_VOCAB,
            "prompt": prompt,
            "max_new_tokens": max_new,
            "sampling": dict(zip(("temperature", "top_k", "top_p", "seed"), params, strict=True)),
            "eos_id": eos,
            "tokens": out,
            "stop_reason": stats.stop_reason,
            "calls": list(backend.calls),
        }
        if follow is not None:
            pending = eos if stats.stop_reason == "eos" else sampler_last(out, stats.stop_reason)
            calls_before = len(backend.calls)
            more, reason, _ = continue_reference(backend, pending, follow, max_new, sampler, eos, context)
            case["continuation"] = {
                "prompt": follow,
                "pending": pending,
                "tokens": more,
                "stop_reason": reason,
                "calls": backend.calls[calls_before:],
            }
        cases.append(case)
    return {
        "format": FORMAT,
        "fake_model": "h = (token*131 + position*31 + cache_length*7) % 100003; "
        "logit[v] = float32(((h + v*7919) % 1000) / 100.0)",
        "cases": cases,
    }


def sampler_last(out: list[int], reason: str) -> int:
    """The token sampled last but not yet fed: the last output token when the loop stopped at its limit."""
    if not out:
        raise ValueError(f"no pending token after stop reason {reason}")
    return out[-1]


# ---- bundles: one good, several tampered --------------------------------------------------------------------

FAKE_MODEL = b"fake model bytes for the manifest vectors\n"
BUNDLE_CASES = {
    # name: (expected error kind or "ok", Python's message fragment)
    "good": ("ok", ""),
    "changed_byte": ("checksum", "checksum mismatch"),
    "wrong_size": ("size", "the manifest says"),
    "path_parent": ("path", "leaves the bundle"),
    "path_absolute": ("path", "leaves the bundle"),
    "path_backslash": ("path", "leaves the bundle"),
    "missing_file": ("missing", "is missing from"),
    "unknown_version": ("version", "format version"),
    "not_a_bundle": ("format", "is not an OmniCoder bundle"),
    "unlisted_graph": ("unlisted", "not in its file list"),
}


def _good_bundle(directory: Path) -> dict:
    from omnicoder.export.bundle_writer import (
        PAGING_SIDECAR,
        TOKENIZER_FILE,
        kv_contract,
        model_metadata,
        paging_sidecar,
    )
    from omnicoder.runtimes.bundle import finalize_bundle

    from omnicoder.presets import mla_test_config
    from omnicoder.tokenizer import ByteTokenizer

    config = mla_test_config()
    (directory / "model.onnx").write_bytes(FAKE_MODEL)
    (directory / TOKENIZER_FILE).write_text(ByteTokenizer().to_json())
    (directory / PAGING_SIDECAR).write_text(json.dumps(paging_sidecar(config, 16), indent=2))
    manifest = {
        "created_by": "omnicoder test vectors",
        "created_at": "2026-01-01T00:00:00Z",
        "target": "onnx",
        "model": model_metadata(config, 123),
        "precision": {"weights": "fp32", "kv": "fp32", "embedding": "fp32", "lm_head": "fp32"},
        "graph": {"file": "model.onnx", "opset": 23, "inputs": [], "outputs": [], "kv": kv_contract(config)},
        "tokenizer": {"file": TOKENIZER_FILE, "type": "omnicoder-byte"},
        "sidecars": {"kv_paging": PAGING_SIDECAR},
    }
    return finalize_bundle(directory, manifest)


def _tamper(name: str, files: dict[str, bytes], manifest: dict) -> None:
    entry = {"sha256": "0" * 64, "bytes": 3}
    if name == "changed_byte":
        data = bytearray(files["model.onnx"])
        data[5] ^= 0x01
        files["model.onnx"] = bytes(data)
    elif name == "wrong_size":
        files["model.onnx"] += b"!"
    elif name == "path_parent":
        manifest["files"]["../escape.txt"] = entry
    elif name == "path_absolute":
        manifest["files"]["/etc/hostname"] = entry
    elif name == "path_backslash":
        manifest["files"]["sub\\..\\..\\escape.txt"] = entry
    elif name == "missing_file":
        del files["model.kv_paging.json"]
    elif name == "unknown_version":
        manifest["format_version"] = 2
    elif name == "not_a_bundle":
        manifest["format"] = "something-else"
    elif name == "unlisted_graph":
        manifest["graph"]["file"] = "other.onnx"


def bundle_vectors() -> dict[str, bytes]:
    """Relative path under tests/vectors/ -> bytes, for every bundle case and the bundles.json index."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _good_bundle(Path(tmp))
        base = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.name != "manifest.json"}
    out: dict[str, bytes] = {}
    index = []
    for name, (kind, fragment) in BUNDLE_CASES.items():
        files, man = dict(base), json.loads(json.dumps(manifest))
        _tamper(name, files, man)
        files["manifest.json"] = (json.dumps(man, indent=2) + "\n").encode()
        for rel, data in files.items():
            out[f"bundles/{name}/{rel}"] = data
        index.append({"name": name, "expect": kind, "python_message": fragment})
    out["bundles.json"] = dumps({"format": FORMAT, "cases": index}).encode()
    return out
