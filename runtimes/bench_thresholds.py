"""profiles/provider_thresholds.json: device profiles, their providers' fused-op policy and speed floors, and
the history of measurements that set them. Read, compare, and rewrite from measurements. Torch-free.

Speed floors are per model (`<model name>/<weights>`): tokens/s of one model say nothing about another.
`--update-thresholds` appends the measurement to the profile's history and sets floor = reference x
(1 - safety_margin), rounded down to two significant digits, where the reference is the fastest of the last
REFERENCE_RUNS medians of the same provider, model and threads (this run included).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omnicoder.runtimes import profile_files
from omnicoder.runtimes.bench_result import Check, ProviderResult
from omnicoder.runtimes.bench_timing import BenchSettings
from omnicoder.runtimes.bundle import validate

from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_write_text

SCHEMA = "provider_thresholds.schema.json"
FILE_NAME = "provider_thresholds.json"
DEFAULT_MARGIN = 0.5
DEFAULT_HISTORY_LIMIT = 200
# Noise on a shared machine only slows a run down, so the fastest of the recent runs' medians is the best
# estimate of what the machine does when left alone: an update made during a contended moment cannot lower the
# floors below what would catch a 3x regression.
REFERENCE_RUNS = 5
KINDS = ("decode", "prefill")


def default_path() -> Path:
    return profile_files.default_path(FILE_NAME)


def load(path: Path) -> dict:
    return profile_files.load_profile_file(path, SCHEMA, "--thresholds")


def save(path: Path, document: dict) -> None:
    validate(document, SCHEMA, str(path))
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def model_key(manifest: dict) -> str:
    return f"{manifest['model']['name']}/{manifest['precision']['weights']}"


def profile_of(document: dict, name: str, create: bool = False) -> dict:
    profiles = document["profiles"]
    if name not in profiles:
        if not create:
            raise OmniCoderError(
                f"unknown profile {name!r} in the thresholds file; choose one of {', '.join(sorted(profiles))} "
                "(or create it with --update-thresholds)"
            )
        profiles[name] = {
            "description": f"created by omnicoder-bench --update-thresholds for {name}",
            "measured": True,
            "source": "omnicoder-bench --update-thresholds",
            "providers": {},
            "history": [],
        }
    return profiles[name]


def settings_of(profile: dict, overrides: dict) -> BenchSettings:
    """The profile's bench settings, with command-line values (not None) taking precedence."""
    values = {**profile.get("bench", {}), **{k: v for k, v in overrides.items() if v is not None}}
    return BenchSettings(**values)


def speed_checks(result: ProviderResult, entry: dict | None, key: str) -> list[Check]:
    """Measured speed against the floors of model `key`: tok/s against absolute floors, or, in a calibrated
    profile, tok/s / the probe's speed against ratio floors. A missing floor fails and says how to set one."""
    floor = (entry or {}).get("floors", {}).get(key)
    ratios = result.ratios()
    if ratios is not None:
        return [_ratio_check(result, floor, key, kind, ratios[kind]) for kind in KINDS]
    checks = []
    for kind in KINDS:
        value, field = getattr(result.speed, f"{kind}_tok_s"), f"min_{kind}_tok_s"
        if floor is None or field not in floor:
            why = "no floor" if floor is None else "only calibrated (ratio) floors"
            note = f"{why} for {key} on this provider; record one with --update-thresholds"
            checks.append(Check(result.provider, f"{kind} tok/s", value, None, note))
        else:
            indicative = not floor.get("measured", False)
            note = "indicative placeholder, not measured on this device class" if indicative else ""
            checks.append(Check(result.provider, f"{kind} tok/s", value, floor[field], note, indicative))
    return checks


def _ratio_check(result: ProviderResult, floor: dict | None, key: str, kind: str, ratio: float) -> Check:
    name, field = f"{kind} / calibration", f"min_{kind}_ratio"
    tok_s = getattr(result.speed, f"{kind}_tok_s")
    measured = f"{tok_s:g} tok/s over the probe's {getattr(result.calibration, _PROBE[kind]):g}"
    if floor is None or field not in floor:
        note = f"no calibrated floor for {key} on this provider; record one with --update-thresholds ({measured})"
        return Check(result.provider, name, ratio, None, note)
    if floor.get("probe_version") != result.calibration.version:
        note = f"the floor was recorded with calibration probe v{floor.get('probe_version')}; re-record it"
        return Check(result.provider, name, ratio, None, note)
    return Check(result.provider, name, ratio, floor[field], measured)


_PROBE = {"decode": "decode_runs_s", "prefill": "prefill_rows_s"}


def round_down(value: float, digits: int = 2) -> float:
    """Round down to `digits` significant digits: 1898 -> 1800, 0.837 -> 0.83."""
    if value <= 0:
        return 0.0
    quantum = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.floor(value / quantum + 1e-9) * quantum, 6)


def update(document: dict, profile_name: str, results: list[ProviderResult], key: str, host: dict, when: str) -> list:
    """Rewrite the floors of model `key` from measured providers whose fused-op checks pass; append history.
    Returns one line per change. A provider that fails its fused-op checks keeps its floors: the update
    must not bless a regression."""
    profile = profile_of(document, profile_name, create=True)
    margin = profile.get("safety_margin", document.get("safety_margin", DEFAULT_MARGIN))
    lines = []
    for result in results:
        if result.status != "measured" or result.speed is None:
            continue
        if not all(check.passed for check in result.checks):
            lines.append(f"{result.provider}: fused-op checks fail, floors for {key} left unchanged")
            continue
        history = profile.setdefault("history", [])
        history.append(history_entry(result, key, host, when))
        runs = [
            h
            for h in history
            if (h["provider"], h["model"], h.get("threads")) == (result.provider, key, result.speed.threads)
        ]
        floor, line = _floor(result, runs, margin, host, when)
        profile["providers"].setdefault(result.provider, {}).setdefault("floors", {})[key] = floor
        lines.append(f"{result.provider} {key}: {line}")
    if not profile["providers"]:  # a new profile with nothing recorded is not kept
        del document["profiles"][profile_name]
        return [*lines, f"profile {profile_name} not created: no provider passed its fused-op checks"]
    limit = document.get("history_limit", DEFAULT_HISTORY_LIMIT)
    profile["history"] = profile.get("history", [])[-limit:]
    floors = [f for e in profile["providers"].values() for f in e.get("floors", {}).values()]
    profile["measured"] = bool(floors) and all(f["measured"] for f in floors)
    return lines


def _floor(result: ProviderResult, runs: list[dict], margin: float, host: dict, when: str) -> tuple[dict, str]:
    """Floors = (1 - margin) x the best of the recent runs: their tok/s medians, or (calibrated) their ratios to the
    probe (same probe version)."""
    if result.calibration is not None:
        version = result.calibration.version
        runs = [h["calibration"] for h in runs if h.get("calibration", {}).get("version") == version]
        this, name, extra, best = result.ratios(), "{}_ratio", {"probe_version": version}, "best"
        on, units = f"(calibrated) on {host.get('cpu') or host['machine']}", ("", " x the calibration probe")
    else:
        this = {kind: getattr(result.speed, f"{kind}_tok_s") for kind in KINDS}
        name, extra, best, on, units = "{}_tok_s", {}, "fastest", f"on {host['machine']}", (" tok/s", " tok/s")
    runs = runs[-REFERENCE_RUNS:]
    reference = {name.format(kind): max(h[name.format(kind)] for h in runs) for kind in KINDS}
    floor = {
        **{f"min_{key}": round_down(value * (1 - margin)) for key, value in reference.items()},
        **extra,
        "measured": True,
        "source": f"omnicoder-bench --update-thresholds {on} ({host['cpus']} CPUs), {when}",
        "safety_margin": margin,
        "reference": {**reference, "runs": len(runs), "time": when},
    }
    decode, prefill = (reference[name.format(kind)] for kind in KINDS)
    line = (
        f"decode floor {floor['min_' + name.format('decode')]:g}{units[0]}, prefill floor "
        f"{floor['min_' + name.format('prefill')]:g}{units[1]} = (1 - {margin:g}) x the {best} of the last "
        f"{len(runs)} run(s) (decode {decode:g}, prefill {prefill:g}; this run {this['decode']:g}, {this['prefill']:g})"
    )
    return floor, line


def history_entry(result: ProviderResult, key: str, host: dict, when: str) -> dict:
    speed, ratios = result.speed, result.ratios()
    assert speed is not None
    calibration = {**result.calibration.__dict__, **{f"{k}_ratio": v for k, v in ratios.items()}} if ratios else None
    return {
        "time": when,
        "provider": result.provider,
        "model": key,
        "decode_tok_s": speed.decode_tok_s,
        "prefill_tok_s": speed.prefill_tok_s,
        "decode_p10_tok_s": speed.decode_p10_tok_s,
        "decode_p90_tok_s": speed.decode_p90_tok_s,
        "peak_rss_mb": result.peak_rss_mb,
        "threads": speed.threads,
        "host": ", ".join(
            str(v) for v in (host["machine"], f"{host['cpus']} CPUs", host["system"], host.get("cpu")) if v
        ),
        "onnxruntime": host["onnxruntime"],
        **({} if calibration is None else {"calibration": calibration}),
    }
