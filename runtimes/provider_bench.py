"""Provider microbench: fused-op checks and tokens/s of a bundle per execution provider, gated by the floors
of a device profile in profiles/provider_thresholds.json.

    omnicoder-bench --bundle DIR [--profile ci-cpu] [--providers CPU XNNPACK ...] [--update-thresholds]
                    [--out provider_bench.json] [--report [PAGE.html]]
    python runtimes/provider_bench.py ...   (the same)

Prints a table (measured, threshold, pass/fail) and exits 1 when any check fails, 2 on bad input. Each bundle
target has its checker (a registry keyed by the manifest's `target`): `onnx` is implemented; `coreml` and
`executorch` bundles stop with a one-line error naming the missing checker. See docs/provider_bench.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main

UPDATE_ENV = "OMNICODER_UPDATE_THRESHOLDS"


# bundle target -> its checker's module: available_providers() (usable here), canonical_provider(a user's name) and
# bench_provider(bundle, provider, profile entry, settings, graphs dir, level) -> ProviderResult. coreml: static
# checks of the MIL program (op inventory, int4, states, metadata), no speed: prediction needs macOS.
CHECKERS = {"onnx": "bench_onnx", "coreml": "coreml_check"}
PLANNED = {
    "executorch": "the ExecuTorch checker (delegated vs non-delegated node counts, decode tok/s through the "
    "ExecuTorch Python runtime)",
}


def checker_for(target: str):
    if target not in CHECKERS:
        missing = PLANNED.get(target, f"a checker for {target!r} bundles")
        raise OmniCoderError(
            f"the provider bench has no checker for target {target!r} bundles yet: {missing} is not implemented"
        )
    return import_module(f"omnicoder.runtimes.{CHECKERS[target]}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory written by omnicoder-export")
    p.add_argument("--profile", default="ci-cpu", help="device profile in the thresholds file (default ci-cpu)")
    p.add_argument("--providers", nargs="+", metavar="NAME", help="execution providers (default: the profile's)")
    p.add_argument("--thresholds", help="thresholds file (default profiles/provider_thresholds.json)")
    p.add_argument(
        "--update-thresholds",
        action="store_true",
        help=f"rewrite the profile's floors from this run's figures, with its safety margin (also {UPDATE_ENV}=1)",
    )
    p.add_argument("--out", default="provider_bench.json", help="where to write everything measured")
    p.add_argument("--report", nargs="?", const="", metavar="PAGE", help="write an HTML page (default: OUT.html)")
    p.add_argument("--graphs-dir", help="where to save provider-optimized graphs (default: OUT_graphs/)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the profile's; 0 = all cores)")
    p.add_argument("--prefill-tokens", type=int, help="prompt length of the prefill timing")
    p.add_argument("--decode-steps", type=int, help="single-token decode steps per round")
    p.add_argument("--repeats", type=int, help="timed rounds (prefill + decode)")
    p.add_argument("--warmup-steps", type=int, help="untimed decode steps after an untimed prefill")
    p.add_argument(
        "--graph-optimization",
        choices=["all", "extended", "basic", "disable"],
        default="all",
        help="onnxruntime graph optimization level (default all, as every runner uses; lower levels show what "
        "is lost without fusions)",
    )
    return p


def host_info() -> dict:
    try:
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = "unknown"
    flags: list[str] = []
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                words = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp") if f in words]
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count() or 0,
        "cpu": cpu,
        "isa": flags,
        "python": platform.python_version(),
        "onnxruntime": ort_version,
    }


def print_table(results: list) -> None:
    rows = [("provider", "check", "measured", "threshold", "result", "note")]
    for result in results:
        name = result.provider.removesuffix("ExecutionProvider")
        if result.status != "measured":
            rows.append((name, "-", "-", "-", result.status, result.reason))
        for c in result.checks:
            threshold = "none" if c.threshold is None else f">= {c.threshold:g}" + (" (indicative)" * c.indicative)
            rows.append((name, c.name, f"{c.measured:g}", threshold, "pass" if c.passed else "FAIL", c.note))
        s = result.speculative
        if s is not None:
            note = (
                f"{s.drafter} drafts (up to {s.max_draft}): {s.tokens_per_call:g} tokens/call, acceptance "
                f"{s.acceptance_rate:.0%}, plain {s.plain_decode_tok_s:g} tok/s, "
                f"{'same' if s.same_tokens else 'DIFFERENT'} tokens as plain greedy"
            )
            rows.append((name, "speculative_decode_tok_s", f"{s.decode_tok_s:g}", "-", "info", note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[5])


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from omnicoder.runtimes import bench_thresholds as th
    from omnicoder.runtimes.bundle import open_bundle

    update = args.update_thresholds or os.environ.get(UPDATE_ENV, "") == "1"
    overrides = {k: getattr(args, k) for k in ("threads", "prefill_tokens", "decode_steps", "repeats", "warmup_steps")}
    if update and (args.graph_optimization != "all" or any(v is not None for v in overrides.values())):
        raise OmniCoderError(
            "--update-thresholds measures with the profile's bench settings at --graph-optimization all; "
            'drop the overrides (edit the profile\'s "bench" block to change them)'
        )
    thresholds_path = Path(args.thresholds) if args.thresholds else th.default_path()
    document = th.load(thresholds_path)
    bundle = open_bundle(args.bundle)
    checker = checker_for(bundle.manifest["target"])
    profile = th.profile_of(document, args.profile, create=update)
    requested = args.providers or list(profile["providers"]) or checker.available_providers()  # a new profile: all here
    providers = list(dict.fromkeys(checker.canonical_provider(p) for p in requested))
    settings = th.settings_of(profile, overrides).validate(bundle.model["context_length"])
    if update:
        profile.setdefault("bench", asdict(settings))  # later runs of a new profile measure the same way
    key = th.model_key(bundle.manifest)
    out = Path(args.out)
    graphs_dir = Path(args.graphs_dir) if args.graphs_dir else out.with_name(f"{out.stem}_graphs")
    for directory in (out.parent, graphs_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OmniCoderError(f"cannot create the output directory {directory}: {exc.strerror or exc}") from None
    print(
        f"omnicoder-bench: {bundle.path} ({key}, {bundle.manifest['precision'].get('quantized_layers', 0)} quantized "
        f"layers), profile {args.profile}, {settings.threads} thread(s)",
        flush=True,
    )
    results = [
        checker.bench_provider(bundle, p, profile["providers"].get(p), settings, graphs_dir, args.graph_optimization)
        for p in providers
    ]
    if not any(r.status == "measured" for r in results):
        raise OmniCoderError(
            f"none of the providers {', '.join(providers)} could be measured here "
            f"(available: {', '.join(checker.available_providers())})"
        )
    host, when = host_info(), datetime.now(UTC).isoformat(timespec="seconds")
    if update:
        for line in th.update(document, args.profile, results, key, host, when):
            print(f"updated {args.profile}: {line}")
        th.save(thresholds_path, document)
        profile = document["profiles"].get(args.profile, profile)
    for result in results:
        if result.status == "measured" and result.speed is not None:
            result.checks += th.speed_checks(result, profile["providers"].get(result.provider), key)
    passed = all(r.passed or r.status == "skipped" for r in results)
    report = {
        "format": "omnicoder-provider-bench",
        "time": when,
        "passed": passed,
        "profile": args.profile,
        "profile_description": profile["description"],
        "thresholds": str(thresholds_path),
        "updated_thresholds": update,
        "model_key": key,
        "bundle": {
            "path": str(bundle.path),
            "target": bundle.manifest["target"],
            "model": bundle.model["name"],
            "parameters": bundle.model["parameters"],
            "weights": bundle.manifest["precision"]["weights"],
            "quantized_layers": bundle.manifest["precision"].get("quantized_layers", 0),
            "n_layers": bundle.model["n_layers"],
            "attention_op": bundle.graph.get("attention_op"),
        },
        "graph_optimization": args.graph_optimization,
        "settings": asdict(settings),
        "host": host,
        "providers": [r.to_dict() for r in results],
    }
    write_outputs(report, out, args.report, profile.get("history", []))
    print_table(results)
    failed = [c for r in results for c in r.checks if not c.passed] + [r for r in results if r.status == "error"]
    verdict = "PASS" if passed else f"FAIL ({len(failed)} failing)"
    print(f"{verdict}: profile {args.profile}, {key}; details in {out}")
    return 0 if passed else 1


def write_outputs(report: dict, out: Path, page: str | None, history: list[dict]) -> None:
    from omnicoder.runtimes.bench_report import render

    from omnicoder.fsutil import atomic_write_text

    outputs = [(out, lambda: json.dumps(report, indent=2) + "\n")]
    if page is not None:
        outputs.append((Path(page) if page else out.with_suffix(".html"), lambda: render(report, history)))
    for path, text in outputs:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text())
        except OSError as exc:
            raise OmniCoderError(f"cannot write {path}: {exc.strerror or exc}") from None
    if page is not None:
        print(f"report: {outputs[-1][0]}")


if __name__ == "__main__":
    sys.exit(main())
