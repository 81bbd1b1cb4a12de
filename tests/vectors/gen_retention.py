"""Vectors of the retention KV store (runtimes/kv_retention.py RetentionKVCache; see generate.py).

Floats are stored as hex of their float32 bits ("%08x" per value, concatenated), so every language reads them
exactly; the feeds after a step are checked by the sha256 of their float32 bytes (little-endian, inputs in layout
order, each [heads, n, width] in C order).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib

import numpy as np

FORMAT = 1

# small KV contracts: GQA-ish (keys and values, 2 heads, widths that make the group halve) and MLA-ish (latent keys)
GQA_KV = {
    "layout": "BNSH",
    "kind": "gqa",
    "heads": 2,
    "key_dim": 12,
    "value_dim": 8,
    "past_key": "past_key_values.{layer}.key",
    "past_value": "past_key_values.{layer}.value",
    "present_key": "present.{layer}.key",
    "present_value": "present.{layer}.value",
}
MLA_KV = {
    "layout": "BNSH",
    "kind": "mla-latent",
    "heads": 1,
    "key_dim": 10,
    "value_dim": 0,
    "past_key": "past_key_values.{layer}.key",
    "past_value": None,
    "present_key": "present.{layer}.key",
    "present_value": None,
}

# name, kv, n_layers, policy settings, updates ("t<n>": truncate to n), with retention logits
STORE_CASES = [
    (
        "gqa-learned-nf4",
        GQA_KV,
        2,
        {"budget_bytes": 10 * 320, "sink_tokens": 2, "compress": "nf4", "compress_group": 16, "recent_fraction": 0.5},
        [8, 8, 3, 1, 1, 1, 1, "t20", 1, 1, 2, 1, 1],
        True,
    ),
    (
        "gqa-learned-u8",
        GQA_KV,
        2,
        {"budget_bytes": 9 * 320 + 100, "sink_tokens": 1, "recent_window": 3, "compress": "u8", "compress_group": 4},
        [8, 8, 2, 1, 1, 1, 1, 1, 1, "t18", 1, 1, 1],
        True,
    ),
    (
        "mla-learned-none",
        MLA_KV,
        3,
        {"budget_bytes": 12 * 120, "sink_tokens": 3, "compress": "none", "recent_fraction": 0.4},
        [8, 8, 8, 1, 1, 1, 1, 1, "t25", 1, 1, 1, 1],
        True,
    ),
    (
        "mla-streaming",
        MLA_KV,
        3,
        {"budget_bytes": 14 * 120, "policy": "streaming", "sink_tokens": 2, "compress": "nf4"},
        [8, 8, 1, 1, 1, "t12", 1, 1, 8, 1],
        False,
    ),
    (
        "mla-learned-nf4-g4",
        MLA_KV,
        3,
        # 690 bytes: 5 full tokens + 2 NF4 ones
        {"budget_bytes": 690, "sink_tokens": 2, "recent_window": 2, "compress": "nf4", "compress_group": 4},
        [3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        True,
    ),
    (
        "gqa-learned-none-too-small",
        GQA_KV,
        2,
        {"budget_bytes": 3 * 320, "sink_tokens": 2, "compress": "none"},
        [2, 1, 1, 1],
        True,
    ),
]


def hexf(values: np.ndarray) -> str:
    """float32 values (C order) as concatenated '%08x' of their bits."""
    return "".join(f"{v:08x}" for v in np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint32))


def unhexf(text: str) -> np.ndarray:
    return np.array([int(text[i : i + 8], 16) for i in range(0, len(text), 8)], np.uint32).view(np.float32)


def feeds_sha256(feeds: dict) -> str:
    digest = hashlib.sha256()
    for value in feeds.values():
        digest.update(np.ascontiguousarray(value[0], "<f4").tobytes())
    return digest.hexdigest()


def state(cache) -> dict:
    return {
        "length": cache.length,
        "positions": [int(p) for p in cache.positions],
        "compressed": [int(c) for c in cache.compressed],
        "nbytes": cache.nbytes(),
        "evicted": cache.evicted,
        "feeds_sha256": feeds_sha256(cache.feeds()),
    }


def _rows(rng: np.random.Generator, heads: int, count: int, width: int) -> np.ndarray:
    """Random rows [heads, count, width] at mixed scales per token (tiny ones give subnormal fp16 scales), some zero."""
    rows = rng.standard_normal((heads, count, width)).astype(np.float32)
    scales = rng.choice(np.array([1.0, 3.0, 0.01, 1e-5, 250.0], np.float32), size=count)
    rows *= scales[None, :, None]
    rows[:, rng.random(count) < 0.08] = 0
    return rows.astype(np.float32)


def _logits(rng: np.random.Generator, count: int) -> np.ndarray:
    """Retention logits [count, 3] on a 0.25 grid, so equal scores and equal class logits (ties) are common."""
    return (rng.integers(-6, 7, (count, 3)) / 4).astype(np.float32)


def _replay(name: str, kv: dict, n_layers: int, policy, updates: list, with_logits: bool, seed: int) -> dict:
    from omnicoder.runtimes.kv_format import KVLayout
    from omnicoder.runtimes.kv_retention import RetentionKVCache

    from omnicoder.errors import OmniCoderError

    layout = KVLayout(kv, n_layers)
    cache = RetentionKVCache(layout, policy)
    rng = np.random.default_rng(seed)
    steps = []
    for update in updates:
        if isinstance(update, str):
            cache.truncate(int(update[1:]))
            steps.append({"truncate": int(update[1:]), **state(cache)})
            continue
        presents = {n: _rows(rng, layout.heads, update, w) for n, w in zip(layout.inputs, layout.widths, strict=True)}
        logits = _logits(rng, update) if with_logits else None
        step = {
            "new_tokens": update,
            "presents": {n: hexf(rows) for n, rows in presents.items()},
            "retention": None if logits is None else hexf(logits),
        }
        cache.observe_outputs({} if logits is None else {"retention": logits[None]})
        try:
            cache.update({n: rows[None] for n, rows in presents.items()}, update)
        except OmniCoderError as exc:
            steps.append({**step, "error": str(exc)})
            break
        steps.append({**step, **state(cache)})
    return {
        "name": name,
        "n_layers": n_layers,
        "kv": kv,
        "policy": _policy_dict(policy),
        "token_bytes": cache.token_bytes,
        "compress_bytes": cache.compress_bytes,
        "recent": cache.recent,
        "steps": steps,
    }


def _policy_dict(policy) -> dict:
    return {
        "budget_bytes": policy.budget_bytes,
        "policy": policy.policy,
        "sink_tokens": policy.sink_tokens,
        "recent_window": policy.recent_window,
        "compress": policy.compress,
        "compress_group": policy.compress_group,
        "recent_fraction": policy.recent_fraction,
    }


class _SidecarBundle:
    """What runner_cli.retention_policy reads of a bundle: its retention sidecar."""

    def __init__(self, sidecar: dict | None) -> None:
        self._sidecar = sidecar

    def sidecar(self, kind: str) -> dict | None:
        return self._sidecar if kind == "retention" else None


def sidecar_policy(sidecar: dict | None, policy: str, kv_budget_mb: float = 0):
    """The policy exactly as the runners build it (runner_cli.retention_policy)."""
    from omnicoder.runtimes.runner_cli import retention_policy

    args = argparse.Namespace(retention=policy, kv_budget_mb=kv_budget_mb, window=None, kv_ram_budget_mb=0)
    return retention_policy(args, _SidecarBundle(sidecar))


def _sidecar_config():
    from omnicoder.presets import mla_test_config

    return dataclasses.replace(mla_test_config(), max_seq_len=96)


def policy_cases() -> tuple[list, list]:
    """Sidecar -> policy (valid, with and without the app's own budget) and sidecars the runtimes must refuse."""
    from omnicoder.export.bundle_writer import retention_sidecar

    from omnicoder.errors import OmniCoderError
    from omnicoder.presets import gqa_test_config, omnicoder_tiny

    valid, invalid = [], []
    for config in (gqa_test_config(), _sidecar_config(), omnicoder_tiny()):
        sidecar = retention_sidecar(config)
        for policy, mb in (("learned", 0), ("streaming", 0), ("learned", 0.01)):
            built = sidecar_policy(sidecar, policy, mb)
            valid.append(
                {
                    "sidecar": sidecar,
                    "retention": policy,
                    "budget_override": int(mb * 2**20) if mb else None,
                    "expected": _policy_dict(built),
                }
            )
    base = retention_sidecar(gqa_test_config())
    variants = {
        "u8-no-fraction": {**base, "compress": {**base["compress"], "dtype": "u8", "group": 8}},
        "none": {**base, "compress": {**base["compress"], "dtype": "none"}, "recent_fraction": 0.5},
    }
    del variants["u8-no-fraction"]["recent_fraction"]
    for sidecar in variants.values():
        valid.append(
            {
                "sidecar": sidecar,
                "retention": "learned",
                "budget_override": None,
                "expected": _policy_dict(sidecar_policy(sidecar, "learned")),
            }
        )
    bad = {
        "compress-fp8": {**base, "compress": {**base["compress"], "dtype": "fp8"}},
        "budget-zero": {**base, "budget_bytes": 0},
        "sinks-negative": {**base, "sink_tokens": -1},
    }
    for what, sidecar in bad.items():
        try:
            sidecar_policy(sidecar, "learned")
        except OmniCoderError as exc:
            invalid.append({"name": what, "sidecar": sidecar, "retention": "learned", "python_message": str(exc)})
        else:
            raise AssertionError(f"the Python runtime accepted the {what} sidecar")
    return valid, invalid


# ---- round trips and fp16 ---------------------------------------------------------------------------------------


def round_trip_cases() -> list[dict]:
    """Rows through NF4 / u8 storage and back: random, ties at the NF4 midpoints and u8 half steps, zeros, constants."""
    from omnicoder.runtimes.kv_format import NF4_MIDPOINTS, round_trip

    rng = np.random.default_rng(77)
    rows = {
        "random": (rng.standard_normal((3, 16)) * np.array([[1.0], [40.0], [1e-4]])).astype(np.float32),
        "midpoints": np.concatenate(([1.0], NF4_MIDPOINTS)).astype(np.float32)[None],
        "u8-half-steps": np.array([[0, 255, 2.5, 3.5, 100.5, 101.5, 0.5, 1.5, 254.5, 7, 8, 9]], np.float32),
        "zeros-constant": np.array([[0] * 8 + [3.25] * 8, [-0.0] * 8 + [-7e-7] * 8], np.float32),
        "width10": (rng.standard_normal((2, 10)) * 5).astype(np.float32),
        "big": (rng.standard_normal((1, 16)) * 30000).astype(np.float32),
    }
    cases = []
    for name, values in rows.items():
        for dtype in ("nf4", "u8"):
            for group in (16, 4):
                out = round_trip(values, dtype, group)
                cases.append(
                    {
                        "name": f"{name}-{dtype}-g{group}",
                        "dtype": dtype,
                        "group": group,
                        "width": values.shape[-1],
                        "rows": hexf(values),
                        "expected": hexf(out),
                    }
                )
    return cases


def fp16_cases() -> dict:
    """float32 -> float16 (round to nearest even, as numpy's astype) -> float32, incl. subnormals, ties and overflow."""
    edges = [
        0.0,
        -0.0,
        1e-6,
        -1e-6,
        2.0**-24,
        2.0**-25,
        3 * 2.0**-26,
        2.0**-25 + 2.0**-40,
        1023 * 2.0**-24,
        1023.5 * 2.0**-24,
        2.0**-14,
        2.0**-14 - 2.0**-30,
        1.0,
        1 + 2.0**-11,
        1 + 3 * 2.0**-11,
        1 + 2.0**-11 + 2.0**-20,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e10,
        float("inf"),
        float("-inf"),
        0.1,
        -3.14159,
        1e-45,
    ]
    rng = np.random.default_rng(16)
    randoms = rng.standard_normal(80) * 10.0 ** rng.integers(-9, 6, 80)
    values = np.concatenate((np.array(edges), randoms)).astype(np.float32)
    with np.errstate(over="ignore"):
        halves = values.astype(np.float16)
    return {
        "values": hexf(values),
        "half_bits": "".join(f"{b:04x}" for b in halves.view(np.uint16)),
        "expected": hexf(halves.astype(np.float32)),
    }


# ---- all -------------------------------------------------------------------------------------------------------


def retention_vectors() -> dict:
    from omnicoder.export.bundle_writer import kv_contract, retention_sidecar
    from omnicoder.runtimes.kv_format import NF4_LEVELS, NF4_MIDPOINTS
    from omnicoder.runtimes.kv_retention import RETENTION_CHUNK, RetentionPolicy

    cases = []
    for seed, (name, kv, n_layers, settings, updates, with_logits) in enumerate(STORE_CASES):
        budget = settings["budget_bytes"]
        policy = RetentionPolicy(budget, **{k: v for k, v in settings.items() if k != "budget_bytes"})
        cases.append(_replay(name, kv, n_layers, policy, updates, with_logits, seed))
    config = _sidecar_config()
    sidecar = retention_sidecar(config)
    policy = sidecar_policy(sidecar, "learned")
    updates = [8, 8, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, "t40", 1, 1, 1]
    case = _replay("sidecar-mla-learned", kv_contract(config), config.n_layers, policy, updates, True, 99)
    case["sidecar"] = sidecar
    cases.append(case)
    valid, invalid = policy_cases()
    return {
        "format": FORMAT,
        "floats": "hex of float32 bits, '%08x' per value; feeds_sha256 over the float32 LE bytes of all feeds",
        "chunk": RETENTION_CHUNK,
        "nf4_levels": hexf(NF4_LEVELS),
        "nf4_midpoints": hexf(NF4_MIDPOINTS),
        "fp16": fp16_cases(),
        "round_trips": round_trip_cases(),
        "policies": valid,
        "invalid_policies": invalid,
        "cases": cases,
    }
