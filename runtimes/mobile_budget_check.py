"""Check that a bundle fits a device's per-app memory limit: weights + KV at a context + runtime overhead.

    omnicoder-mobile-check --bundle DIR --device NAME [--context N] [--devices FILE] [--json]
    python runtimes/mobile_budget_check.py ...   (the same)

Devices and their limits are in profiles/devices.json. Prints a table (also what the KV would take if the
bundle were exported with --kv u8 / nf4) and exits 1 when the total is over the limit, saying by how much and
the longest context that fits; 2 on bad input (an unknown device lists the known ones). --json adds a JSON
object on stdout's last line. See docs/kv_budget.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omnicoder.runtimes import profile_files
from omnicoder.runtimes.kv_budget import MB, PageBudget, mb, open_for_sizes, weights_bytes
from omnicoder.runtimes.kv_format import KV_DTYPES

from omnicoder.cliutil import TOKENS, ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main

FILE_NAME = "devices.json"
SCHEMA = "devices.schema.json"


def default_path() -> Path:
    return profile_files.default_path(FILE_NAME)


def device_of(document: dict, name: str) -> dict:
    devices = document["devices"]
    if name not in devices:
        raise OmniCoderError(f"unknown device {name!r}; known devices: {', '.join(devices)}")
    return devices[name]


def app_limit_bytes(device: dict) -> int:
    if "app_limit_mb" in device:
        return int(device["app_limit_mb"] * MB)
    return int(device["app_limit_fraction"] * device["ram_gb"] * 1024 * MB)


def overhead_bytes(document: dict, device: dict, weights: int) -> tuple[int, dict]:
    """Runtime overhead = base_mb + weights_factor x weights, the device's own figures when it has them."""
    overhead = device.get("overhead", document["default_overhead"])
    return int(overhead["base_mb"] * MB + overhead["weights_factor"] * weights), overhead


def check(bundle, sidecar: dict, document: dict, device_name: str, context: int) -> dict:
    """Every figure of the check, in bytes."""
    device = device_of(document, device_name)
    windows = bundle.graph["kv"].get("windows")
    layout = PageBudget.from_sidecar(sidecar, windows=windows)
    weights = weights_bytes(bundle.manifest)
    overhead, overhead_rule = overhead_bytes(document, device, weights)
    limit = app_limit_bytes(device)
    if bundle.shared_kv:  # --kv-io shared: the whole context is allocated at load
        context = max(context, bundle.model["context_length"])
    kv = layout.bytes_at(context)
    total = weights + kv + overhead
    room_for_kv = limit - weights - overhead
    alternatives = {}
    for dtype in KV_DTYPES[2:]:  # u8, nf4
        if dtype != layout.kv_dtype:
            other = PageBudget.from_sidecar(sidecar, dtype, windows)
            alternatives[dtype] = {
                "kv_bytes": other.bytes_at(context),
                "total_bytes": weights + other.bytes_at(context) + overhead,
                "max_context": other.max_context(room_for_kv),
            }
    return {
        "format": "omnicoder-mobile-check",
        "bundle": str(bundle.path),
        "model": f"{bundle.model['name']}/{bundle.manifest['precision']['weights']}",
        "device": device_name,
        "device_description": device["description"],
        "ram_gb": device["ram_gb"],
        "limit_basis": device["limit_basis"],
        "context": context,
        "model_context": bundle.model["context_length"],
        "kv_dtype": layout.kv_dtype,
        "weights_bytes": weights,
        "kv_bytes": kv,
        "overhead_bytes": overhead,
        "overhead_rule": {k: overhead_rule[k] for k in ("base_mb", "weights_factor")},
        "total_bytes": total,
        "app_limit_bytes": limit,
        "headroom_bytes": limit - total,
        "fits": total <= limit,
        "max_context": layout.max_context(room_for_kv),
        "if_exported_with_kv": alternatives,
    }


def print_table(r: dict) -> None:
    print(
        f"omnicoder-mobile-check: {r['bundle']} ({r['model']}) on {r['device']}: {r['device_description']} "
        f"({r['ram_gb']:g} GB RAM)"
    )
    rule = r["overhead_rule"]
    rows = [
        ("weights", mb(r["weights_bytes"]), ""),
        (f"KV at context {r['context']} ({r['kv_dtype']})", mb(r["kv_bytes"]), ""),
        ("runtime overhead", mb(r["overhead_bytes"]), f"{rule['base_mb']:g} MB + {rule['weights_factor']:g} x weights"),
        ("total", mb(r["total_bytes"]), ""),
        ("app memory limit", mb(r["app_limit_bytes"]), r["limit_basis"]),
        ("headroom", mb(r["headroom_bytes"]), "fits" if r["fits"] else "OVER"),
        (f"max context at KV {r['kv_dtype']}", str(r["max_context"]), f"tokens (model: {r['model_context']})"),
    ]
    for dtype, alt in r["if_exported_with_kv"].items():
        rows.append(
            (
                f"KV if exported with --kv {dtype}",
                mb(alt["kv_bytes"]),
                f"total {mb(alt['total_bytes'])} MB, max context {alt['max_context']} tokens",
            )
        )
    width = max(len(row[0]) for row in rows)
    number = max(len(row[1]) for row in rows)
    print(f"  {'item'.ljust(width)}  {'MB'.rjust(number)}")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value.rjust(number)}  {note}".rstrip())


def over_message(r: dict) -> str:
    parts = f"weights {mb(r['weights_bytes'])} + KV {mb(r['kv_bytes'])} + overhead {mb(r['overhead_bytes'])}"
    head = (
        f"over the {r['device']} app memory limit by {mb(-r['headroom_bytes'])} MB "
        f"({parts} = {mb(r['total_bytes'])} MB > {mb(r['app_limit_bytes'])} MB)"
    )
    if r["max_context"] == 0:
        return f"{head}; weights and overhead leave no room for KV: export smaller weights (--weights int4)"
    fix = f"; at KV {r['kv_dtype']} the longest context that fits is {r['max_context']} tokens"
    alts = ", ".join(f"{d}: {a['max_context']}" for d, a in r["if_exported_with_kv"].items())
    return head + fix + (f" (if exported with --kv u8/nf4: {alts})" if alts else "")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-mobile-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory written by omnicoder-export")
    p.add_argument("--device", required=True, help="device name in the devices file (e.g. iphone-15, pixel-8)")
    p.add_argument("--context", type=TOKENS, help="tokens of context to budget KV for (default: the model's context)")
    p.add_argument("--devices", help="devices file (default profiles/devices.json)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON on stdout's last line")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    document = profile_files.load_profile_file(
        Path(args.devices) if args.devices else default_path(), SCHEMA, "--devices"
    )
    device_of(document, args.device)  # an unknown device fails before the bundle is read
    bundle, sidecar, context = open_for_sizes(args.bundle, args.context)
    result = check(bundle, sidecar, document, args.device, context)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    if not result["fits"]:
        print(f"error: {over_message(result)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
