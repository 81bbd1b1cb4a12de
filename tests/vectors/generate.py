"""Write the shared test vectors of the sample apps' cores (docs/apps.md) from the real Python runtime.

    .venv/bin/python tests/vectors/generate.py          # rewrite tests/vectors/*.json and tests/vectors/bundles/

The Kotlin (android-app/core) and Swift (ios-app/OmniCoderCore) cores read the same files in their unit tests;
tests/test_vectors.py checks that the committed files are what this script writes, and that the Python runtime
passes them. Everything here is deterministic (fixed seeds, fixed timestamps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gen_chat_format import chat_format_vectors  # noqa: E402
from gen_hf_tokenizer import compact, hf_tokenizer_vectors  # noqa: E402
from gen_kv import _fake_presents, kv_layout_vectors, paging_vectors  # noqa: E402, F401
from gen_retention import retention_vectors, sidecar_policy  # noqa: E402, F401
from gen_runs import FakeBackend, bundle_vectors, decode_loop_vectors  # noqa: E402, F401
from gen_speculative import speculative_json  # noqa: E402

FORMAT = 1  # of these vector files


def dumps(data: object) -> str:
    return json.dumps(data, indent=1, ensure_ascii=True) + "\n"


def portable(text: str) -> str | None:
    """The text when it is valid Unicode (no lone surrogates, which Swift's JSON parser rejects), else None."""
    return None if any(0xD800 <= ord(c) < 0xE000 for c in text) else text


def utf16(text: str) -> list[int]:
    raw = text.encode("utf-16-le", errors="surrogatepass")
    return [int.from_bytes(raw[i : i + 2], "little") for i in range(0, len(raw), 2)]


# ---- tokenizer ------------------------------------------------------------------------------------------

ENCODE_TEXTS = [
    "",
    "hello",
    "def main():\n    return 42\n",
    "h\u00e9llo w\u00f6rld",
    "\u65e5\u672c\u8a9e",
    "emoji \U0001f600 ok",
    "\x00\x7f\t\r\n",
    "\u20ac\u00a0\uffff\U0010ffff",
    "\ud800",  # lone surrogates round-trip (surrogatepass)
    "a\udfffb\udbff",
]
DECODE_IDS = [
    [],
    [256, 104, 105, 257, 258, 271],
    [0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80],
    [0xED, 0xA0, 0x80, 0x41],
    [0x7F, 0x00, 0x0A],
]
STREAM_IDS = [
    [0x68, 0x69],
    [0xE2, 0x82, 0xAC],
    [0xE2, 256, 0x82, 257, 0xAC],
    [0xF0, 0x9F, 0x98, 0x80, 0x41],
    [0xFF, 0x41, 0x80, 0xC0, 0x80, 0xC1],
    [0xE2, 0x82, 0x41],
    [0xED, 0xA0, 0x80, 0xED, 0x9F, 0xBF],
    [0xE0, 0x80, 0xE0, 0xA0, 0x80],
    [0xF4, 0x90, 0x80, 0x80, 0xF4, 0x8F, 0xBF, 0xBF],
    [0xF0, 0x9F, 0xF0, 0x9F, 0x98, 0x80],
    [0xF5, 0xF8, 0xFE],
    [0x41, 0xE2, 0x82],
    [0xF0, 0x9F, 0x98],
    [0xED, 0xA0],
    [0xED, 0xBF, 0x41],
    [0xED, 0x9F],
    [0xE0, 0xA0],
    [0xF4, 0x8F, 0xBF],
]


def tokenizer_vectors() -> dict:
    from omnicoder.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    encode = []
    for text in ENCODE_TEXTS:
        for add_bos in (False, True) if text in ("", "hello") else (False,):
            encode.append(
                {"text": portable(text), "utf16": utf16(text), "add_bos": add_bos, "ids": tok.encode(text, add_bos)}
            )
    decode = [{"ids": ids, "text": portable(tok.decode(ids)), "utf16": utf16(tok.decode(ids))} for ids in DECODE_IDS]
    stream = []
    for ids in STREAM_IDS:
        decoder = tok.incremental_decoder()
        pieces = [decoder.push(i) for i in ids]
        stream.append({"ids": ids, "pieces": pieces, "flush": decoder.flush()})
    spec = json.loads(tok.to_json())
    return {"format": FORMAT, "tokenizer_json": spec, "encode": encode, "decode": decode, "stream": stream}


# ---- sampling -------------------------------------------------------------------------------------------

SAMPLING_PARAMS = [
    (1.0, 0, 1.0),
    (0.8, 0, 0.95),
    (0.7, 20, 1.0),
    (1.3, 5, 0.9),
    (0.5, 0, 0.5),
    (2.0, 3, 1.0),
    (0.0, 0, 0.95),
]
MARGIN = 1e-9  # every decision in a vector is at least this far from flipping, so 1-ulp libm differences agree


def _margins_ok(sampler, logits: np.ndarray, draws: int) -> bool:
    """True when no top-p cut and no draw of this case sits within MARGIN of a boundary."""
    from omnicoder.runtimes.sampling import SplitMix64

    if sampler.greedy:
        return True
    params = sampler.params
    scaled = np.asarray(logits, np.float64) / params.temperature
    if 0 < params.top_k < scaled.size:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        ordered = probs[np.argsort(-probs, kind="stable")]
        gaps = np.abs(np.cumsum(ordered) - ordered - params.top_p)
        if gaps.min() < MARGIN:
            return False
    final = sampler.probabilities(logits)
    cdf = np.cumsum(final)
    rng = SplitMix64(params.seed)
    for _ in range(draws):
        target = rng.next_double() * cdf[-1]
        if np.abs(cdf[final > 0] - target).min() < MARGIN:
            return False
    return True


def sampling_vectors() -> dict:
    from omnicoder.runtimes.sampling import Sampler, SamplingParams, SplitMix64

    rng_cases = []
    for seed in (0, 1, 42, 1234567, 2**53 - 1):
        gen = SplitMix64(seed)
        values = [gen.next_u64() for _ in range(4)]
        gen = SplitMix64(seed)
        doubles = [gen.next_double() for _ in range(4)]
        rng_cases.append({"seed": seed, "u64": [f"{v:016x}" for v in values], "doubles": doubles})
    data = np.random.default_rng(2024)
    logit_sets = {
        "six": np.array([0.1, 2.0, 1.5, -1.0, 0.7, 1.9], np.float32),
        "ties": np.array([1.0, 3.0, 3.0, 2.0, 3.0, -2.0, 2.0], np.float32),
        "wide17": (data.standard_normal(17) * 3).astype(np.float32),
        "vocab272": (data.standard_normal(272) * 2).astype(np.float32),
    }
    cases = []
    for name, logits in logit_sets.items():
        for temperature, top_k, top_p in SAMPLING_PARAMS:
            seed = 7
            while True:
                params = SamplingParams(temperature, top_k, top_p, seed)
                if _margins_ok(Sampler(params), logits, 24):
                    break
                seed += 1
            sampler = Sampler(params)
            probs = sampler.probabilities(logits)
            tokens = [sampler.sample(logits) for _ in range(24)]
            cases.append(
                {
                    "name": f"{name}-t{temperature}-k{top_k}-p{top_p}",
                    "logits": [float(x) for x in logits],
                    "temperature": temperature,
                    "top_k": top_k,
                    "top_p": top_p,
                    "seed": seed,
                    "probabilities": [float(p) for p in probs],
                    "tokens": tokens,
                }
            )
    return {"format": FORMAT, "probability_tolerance": 1e-12, "rng": rng_cases, "cases": cases}


# ---- all ---------------------------------------------------------------------------------------------------


def build_all() -> dict[str, bytes]:
    """Every vector file: relative path under tests/vectors/ -> content."""
    out = {
        "tokenizer.json": dumps(tokenizer_vectors()).encode(),
        "sampling.json": dumps(sampling_vectors()).encode(),
        "kv_layout.json": dumps(kv_layout_vectors()).encode(),
        "paging.json": dumps(paging_vectors()).encode(),
        "decode_loop.json": dumps(decode_loop_vectors()).encode(),
        "retention.json": dumps(retention_vectors()).encode(),
        "hf_tokenizer.json": (compact(hf_tokenizer_vectors()) + "\n").encode(),
        "chat_format.json": dumps(chat_format_vectors()).encode(),
        "speculative.json": speculative_json().encode(),
    }
    out.update(bundle_vectors())
    return out


def main() -> int:
    import shutil

    files = build_all()
    shutil.rmtree(HERE / "bundles", ignore_errors=True)
    for rel, data in files.items():
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} files under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
