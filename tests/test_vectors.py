"""The shared app test vectors (tests/vectors/): up to date with generate.py, and passed by the Python runtime.

The Kotlin and Swift cores check the same files (docs/apps.md), so the three implementations stay compatible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from omnicoder.errors import OmniCoderError

VECTORS = Path(__file__).resolve().parent / "vectors"


def _generator():
    spec = importlib.util.spec_from_file_location("vector_generate", VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


# Freshness compares vectors by value. Integers, strings (incl. the hex float32 bit patterns of retention.json and
# its sha256 of IEEE-exact feeds) and structure must be equal; a float64 (sampling probabilities, SplitMix64
# doubles) may move by FLOAT_RTOL relative: ~450 ulps, which covers the last-ulp differences of numpy's exp/sum
# kernels between CPUs (AVX2 vs AVX-512 code paths), and at least 10x below what the Python, Kotlin and Swift
# runtimes are held to (sampling.json's probability_tolerance, 1e-12 absolute on probabilities <= 1).
FLOAT_RTOL = 1e-13
FLOAT_ATOL = 1e-300  # so that 0.0 against a denormal is not "stale"


def json_differences(old: object, new: object, where: str = "$") -> list[str]:
    """Where two parsed JSON documents differ beyond FLOAT_RTOL (bools and ints exactly, floats by value)."""
    if isinstance(old, float) or isinstance(new, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
        if numbers and math.isclose(old, new, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL):
            return []
        return [f"{where}: {old!r} != {new!r}"]
    if type(old) is not type(new):
        return [f"{where}: {type(old).__name__} != {type(new).__name__}"]
    if isinstance(old, dict):
        if old.keys() != new.keys():
            return [f"{where}: keys {sorted(old.keys() ^ new.keys())} differ"]
        return [d for key in old for d in json_differences(old[key], new[key], f"{where}.{key}")]
    if isinstance(old, list):
        if len(old) != len(new):
            return [f"{where}: length {len(old)} != {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in json_differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} != {new!r}"]


def file_differences(rel: str, committed: bytes, fresh: bytes) -> list[str]:
    """JSON files by value (json_differences), anything else (the bundles' ONNX graphs) byte for byte."""
    if rel.endswith(".json"):
        try:
            return json_differences(json.loads(committed), json.loads(fresh), rel)
        except ValueError:
            pass
    return [] if committed == fresh else [f"{rel}: bytes differ"]


def test_committed_vectors_are_up_to_date():
    files = _generator().build_all()
    stale = [rel for rel in files if not (VECTORS / rel).is_file()]
    for rel, data in files.items():
        if (VECTORS / rel).is_file():
            stale += file_differences(rel, (VECTORS / rel).read_bytes(), data)[:3]
    on_disk = {p.relative_to(VECTORS).as_posix() for p in (VECTORS / "bundles").rglob("*") if p.is_file()}
    extra = sorted(on_disk - set(files))
    assert not stale and not extra, f"run .venv/bin/python tests/vectors/generate.py (stale: {stale}, extra: {extra})"


def test_freshness_tolerates_ulps_and_catches_real_changes():
    """One ulp on every sampling probability is the same vector; one value moved past FLOAT_RTOL, a changed
    token, a changed hex bit pattern or a dropped case is stale."""
    committed = (VECTORS / "sampling.json").read_bytes()
    data = json.loads(committed)
    ulps = json.loads(committed)
    for case in ulps["cases"]:
        case["probabilities"] = [float(np.nextafter(p, 2.0)) for p in case["probabilities"]]
    assert file_differences("sampling.json", committed, json.dumps(ulps).encode()) == []
    moved = json.loads(committed)
    probs = moved["cases"][5]["probabilities"]
    index = max(range(len(probs)), key=probs.__getitem__)
    probs[index] *= 1 + 1e-9
    assert file_differences("sampling.json", committed, json.dumps(moved).encode()) == [
        f"sampling.json.cases[5].probabilities[{index}]: {data['cases'][5]['probabilities'][index]!r} != "
        f"{probs[index]!r}"
    ]
    token = json.loads(committed)
    token["cases"][0]["tokens"][0] += 1
    dropped = json.loads(committed)
    dropped["cases"].pop()
    for changed in (token, dropped):
        assert file_differences("sampling.json", committed, json.dumps(changed).encode())
    retention = (VECTORS / "retention.json").read_bytes()
    flipped = json.loads(retention)
    text = flipped["round_trips"][0]["expected"]
    flipped["round_trips"][0]["expected"] = text[:-1] + ("0" if text[-1] != "0" else "1")
    assert file_differences("retention.json", retention, json.dumps(flipped).encode())
    assert file_differences("bundles/good/model.onnx", b"\x01\x02", b"\x01\x03")


def test_tokenizer_vectors():
    from omnicoder.tokenizer import ByteTokenizer, tokenizer_from_json

    data = load("tokenizer.json")
    tok = tokenizer_from_json(json.dumps(data["tokenizer_json"]))
    assert tok == ByteTokenizer()
    surrogates = 0
    for case in data["encode"]:
        units = case["utf16"]
        text = b"".join(u.to_bytes(2, "little") for u in units).decode("utf-16-le", errors="surrogatepass")
        assert case["text"] in (text, None)
        assert tok.encode(text, add_bos=case["add_bos"]) == case["ids"]
        assert tok.decode(case["ids"]) == text
        surrogates += any(0xD800 <= u < 0xE000 for u in units)
    assert surrogates >= 2
    for case in data["decode"]:
        units = case["utf16"]
        text = b"".join(u.to_bytes(2, "little") for u in units).decode("utf-16-le", errors="surrogatepass")
        assert tok.decode(case["ids"]) == text and case["text"] in (text, None)
    for case in data["stream"]:
        decoder = tok.incremental_decoder()
        assert [decoder.push(i) for i in case["ids"]] == case["pieces"]
        assert decoder.flush() == case["flush"]
    assert any("\ufffd" in "".join(c["pieces"]) for c in data["stream"])


def test_sampling_vectors():
    from omnicoder.runtimes.sampling import Sampler, SamplingParams, SplitMix64

    data = load("sampling.json")
    for case in data["rng"]:
        gen = SplitMix64(case["seed"])
        assert [f"{gen.next_u64():016x}" for _ in case["u64"]] == case["u64"]
    assert data["rng"][3]["u64"][0] == "599ed017fb08fc85"  # SplitMix64's published first output for seed 1234567
    for case in data["cases"]:
        params = SamplingParams(case["temperature"], case["top_k"], case["top_p"], case["seed"])
        logits = np.array(case["logits"], dtype=np.float32)
        probs = Sampler(params).probabilities(logits)
        np.testing.assert_allclose(probs, case["probabilities"], rtol=0, atol=data["probability_tolerance"])
        sampler = Sampler(params)
        assert [sampler.sample(logits) for _ in case["tokens"]] == case["tokens"], case["name"]
    assert len({tuple(c["tokens"]) for c in data["cases"]}) > 10


def test_kv_layout_vectors():
    from omnicoder.runtimes.kv_budget import bytes_per_token_per_layer
    from omnicoder.runtimes.kv_format import KVLayout

    for case in load("kv_layout.json")["cases"]:
        layout = KVLayout(case["kv"], case["n_layers"])
        assert layout.inputs == case["inputs"] and layout.outputs == case["outputs"]
        assert layout.widths == case["widths"] and [d.name for d in layout.dtypes] == case["dtypes"]
        assert layout.bytes_per_token() == case["bytes_per_token"]
        assert sum(bytes_per_token_per_layer(case["sidecar"])) == case["bytes_per_token"]


def test_paging_vectors():
    from omnicoder.runtimes.kv_budget import PageBudget, plan_paging
    from omnicoder.runtimes.kv_format import KVLayout
    from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy

    fake_presents = _generator()._fake_presents
    data = load("paging.json")
    for case in data["pages"]:
        layout = KVLayout(case["kv"], case["n_layers"])
        policy = PagingPolicy(page_len=case["page_len"], window=case["window"], sink_pages=case["sink_pages"])
        cache = PagedKVCache(layout, policy)
        for step in case["steps"]:
            fed = cache.feeds()[layout.inputs[0]][0, 0, :, 0]
            assert [int(round(v / 10)) for v in fed] == step["fed_tokens"]
            cache.update(fake_presents(layout, cache.length, step["new_tokens"]), step["new_tokens"])
            assert [[p.start, p.filled] for p in cache.pages] == step["pages"]
            assert cache.attended_pages() == step["attended"]
    assert any(len(s["fed_tokens"]) < s["length"] - s["new_tokens"] for c in data["pages"] for s in c["steps"])
    for case in data["sizing"]:
        budget = PageBudget.from_sidecar(case["sidecar"])
        assert budget.page_bytes == case["page_bytes"]
        plan = plan_paging(budget, case["context"], case["budget_bytes"], case["model_context"])
        assert (None if plan is None else plan.to_dict()) == case["plan"]
    kinds = {(c["plan"] is None, c["plan"] and c["plan"]["fits_whole"]) for c in data["sizing"]}
    assert kinds == {(True, None), (False, True), (False, False)}


def test_decode_loop_vectors():
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    gen = _generator()
    reasons = set()
    for case in load("decode_loop.json")["cases"]:
        backend = gen.FakeBackend(case["context"])
        sampler = Sampler(SamplingParams(**case["sampling"]))
        out, stats = generate_ids(backend, case["prompt"], case["max_new_tokens"], sampler, case["eos_id"])
        assert out == case["tokens"] and stats.stop_reason == case["stop_reason"], case["name"]
        assert backend.calls == case["calls"]
        reasons.add(stats.stop_reason)
        follow = case.get("continuation")
        if follow and case["sampling"]["temperature"] == 0:
            # reusing the KV cache gives what a fresh run over the whole transcript gives (greedy)
            transcript = case["prompt"] + case["tokens"][:-1] + [follow["pending"], *follow["prompt"]]
            fresh, _ = generate_ids(gen.FakeBackend(case["context"]), transcript, case["max_new_tokens"], sampler, -1)
            assert follow["tokens"] == fresh[: len(follow["tokens"])]
    assert reasons == {"limit", "eos", "context"}


def _f32(text: str) -> np.ndarray:
    """The vectors' float encoding: '%08x' of each value's float32 bits, concatenated."""
    return np.frombuffer(bytes.fromhex(text), ">u4").astype(np.uint32).view(np.float32)


def _bits(values: np.ndarray) -> list[int]:
    return np.ascontiguousarray(values, np.float32).view(np.uint32).reshape(-1).tolist()


def test_retention_quantization_vectors():
    from omnicoder.runtimes.kv_format import NF4_LEVELS, round_trip

    data = load("retention.json")
    assert _bits(_f32(data["nf4_levels"])) == _bits(NF4_LEVELS)
    assert _bits(_f32(data["nf4_midpoints"])) == _bits((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    fp16 = data["fp16"]
    with np.errstate(over="ignore"):
        halves = _f32(fp16["values"]).astype(np.float16)
    text = fp16["half_bits"]
    assert halves.view(np.uint16).tolist() == [int(text[i : i + 4], 16) for i in range(0, len(text), 4)]
    assert _bits(halves.astype(np.float32)) == _bits(_f32(fp16["expected"]))
    assert {0x0000, 0x8000, 0x0001, 0x7C00, 0xFC00} <= set(halves.view(np.uint16).tolist())
    for case in data["round_trips"]:
        rows = _f32(case["rows"]).reshape(-1, case["width"])
        assert _bits(round_trip(rows, case["dtype"], case["group"])) == _bits(_f32(case["expected"])), case["name"]


def test_retention_policy_vectors():
    from omnicoder.runtimes.kv_retention import RetentionPolicy

    gen = _generator()
    data = load("retention.json")
    for case in data["policies"]:
        mb = (case["budget_override"] or 0) / 2**20  # the runner's --kv-budget-mb for that many bytes
        built = gen.sidecar_policy(case["sidecar"], case["retention"], mb)
        assert built == RetentionPolicy(**case["expected"])
    for case in data["invalid_policies"]:
        with pytest.raises(OmniCoderError, match=re.escape(case["python_message"])):
            gen.sidecar_policy(case["sidecar"], case["retention"])
    assert {c["expected"]["compress"] for c in data["policies"]} == {"nf4", "u8", "none"}


def _retention_state(cache) -> dict:
    """The cache after a step. Hashing float output is sound here and only here: the feeds are vector inputs
    passed through min/max, IEEE-correctly-rounded + - * / and round (u8 / NF4 / fp16 round trips), which give
    the same bits on every CPU and in Kotlin and Swift; no exp, sum or matmul reaches them."""
    digest = hashlib.sha256()
    for value in cache.feeds().values():
        digest.update(np.ascontiguousarray(value[0], "<f4").tobytes())
    return {
        "length": cache.length,
        "positions": cache.positions.tolist(),
        "compressed": cache.compressed.astype(int).tolist(),
        "nbytes": cache.nbytes(),
        "evicted": cache.evicted,
        "feeds_sha256": digest.hexdigest(),
    }


def test_retention_store_vectors():
    from omnicoder.runtimes.kv_format import KVLayout
    from omnicoder.runtimes.kv_retention import RetentionKVCache, RetentionPolicy

    gen = _generator()
    seen = set()
    for case in load("retention.json")["cases"]:
        layout = KVLayout(case["kv"], case["n_layers"])
        policy = RetentionPolicy(**case["policy"])
        if "sidecar" in case:
            assert gen.sidecar_policy(case["sidecar"], policy.policy) == policy
        cache = RetentionKVCache(layout, policy)
        assert (cache.token_bytes, cache.compress_bytes, cache.recent) == (
            case["token_bytes"],
            case["compress_bytes"],
            case["recent"],
        )
        for step in case["steps"]:
            if "truncate" in step:
                cache.truncate(step["truncate"])
                seen.add("truncate")
            else:
                n = step["new_tokens"]
                presents = {
                    name: _f32(step["presents"][name]).reshape(1, layout.heads, n, width)
                    for name, width in zip(layout.inputs, layout.widths, strict=True)
                }
                retention = step["retention"]
                cache.observe_outputs({} if retention is None else {"retention": _f32(retention).reshape(1, n, 3)})
                if "error" in step:
                    with pytest.raises(OmniCoderError, match=re.escape(step["error"])):
                        cache.update(presents, n)
                    seen.add("error")
                    break
                cache.update(presents, n)
            got = _retention_state(cache)
            assert got == {k: step[k] for k in got}, case["name"]
            seen.update({"compressed"} if any(step["compressed"]) else set())
            seen.update({"evicted"} if step["evicted"] else set())
    assert seen == {"truncate", "error", "compressed", "evicted"}


@pytest.mark.parametrize("case", load("bundles.json")["cases"], ids=lambda c: c["name"])
def test_bundle_vectors(case):
    from omnicoder.runtimes.bundle import open_bundle

    path = VECTORS / "bundles" / case["name"]
    if case["expect"] == "ok":
        bundle = open_bundle(path)
        assert bundle.tokenizer().encode("a") == [97]
        assert bundle.sidecar("kv_paging")["page_len"] == 16
    else:
        with pytest.raises(OmniCoderError, match=case["python_message"]):
            open_bundle(path)
