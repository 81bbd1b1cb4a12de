"""The provider bench's checker for `target: onnx` bundles: per execution provider, build the session, save
the provider-optimized graph, read its op inventory, check the fused ops and time prefill and decode.
Torch-free: onnxruntime + numpy.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnxruntime as ort
from omnicoder.runtimes import graph_checks
from omnicoder.runtimes.bench_calibration import CalibrationProbe
from omnicoder.runtimes.bench_graph import graph_op_counts, profile_inventory
from omnicoder.runtimes.bench_ops import OpPolicy, op_checks
from omnicoder.runtimes.bench_result import ProviderResult
from omnicoder.runtimes.bench_timing import BenchSettings, measure, measure_speculative, warm_up
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.onnx_session import OnnxProgram, resolve_providers, session_options
from omnicoder.runtimes.onnx_session import canonical_provider as canonical_provider  # the bench's checker API
from omnicoder.runtimes.stats import peak_rss_mb

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
NOT_LOCAL = {"AzureExecutionProvider"}  # listed as available by every build, runs nothing locally
COMPILED_NODES = "contains compiled nodes"
ORT_ERRORS = graph_checks.ORT_ERRORS + (RuntimeError,)


def available_providers() -> list[str]:
    return [p for p in ort.get_available_providers() if p not in NOT_LOCAL]


def current_rss_mb() -> float | None:
    """Resident memory of this process now (Linux), or None where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_session(bundle: Bundle, provider: str, threads: int, level: str, optimized: Path, prefix: str):
    """The session, and whether the optimized graph was saved (providers that compile nodes refuse)."""
    graph = str(bundle.file(bundle.graph["file"]))
    for path in (optimized, None):  # the second try runs without saving the optimized graph
        options = session_options(threads, path, LEVELS[level])
        options.enable_profiling, options.profile_file_prefix = True, prefix
        try:
            return ort.InferenceSession(graph, options, providers=resolve_providers(provider)), path is not None
        except ORT_ERRORS as exc:
            if path is None or COMPILED_NODES not in str(exc):
                raise
        optimized.unlink(missing_ok=True)


def bench_provider(
    bundle: Bundle, provider: str, entry: dict | None, settings: BenchSettings, graphs_dir: Path, level: str = "all"
) -> ProviderResult:
    """Inventory, fused-op checks and speed of one provider (speed floors are compared by the caller)."""
    if provider not in available_providers():
        return ProviderResult(provider, "skipped", reason="not available in this onnxruntime build")
    graphs_dir.mkdir(parents=True, exist_ok=True)
    optimized = graphs_dir / f"{bundle.path.name}.{provider.removesuffix('ExecutionProvider')}.{level}.optimized.onnx"
    rss_before = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="omnicoder-bench-") as tmp:
        start = time.perf_counter()
        try:
            session, saved = build_session(bundle, provider, settings.threads, level, optimized, f"{tmp}/profile")
        except ORT_ERRORS as exc:
            reason = f"onnxruntime cannot build the session: {str(exc).strip().splitlines()[0]}"
            return ProviderResult(provider, "error", reason=reason)
        session_seconds = time.perf_counter() - start
        graph_checks.check_session(bundle, session)
        backend = GraphBackend(bundle, OnnxProgram(session))
        vocab = bundle.model["vocab_size"]
        warm_up(backend, settings, vocab)  # profiled: which provider ran which node
        by_provider = profile_inventory(session.end_profiling())
        rows, runs = settings.prefill_tokens, settings.decode_steps
        probe = CalibrationProbe(provider, settings.threads, rows, runs, Path(tmp)) if settings.calibrate else None
        speed = measure(backend, settings, vocab, probe.round if probe else None)
        speculative = measure_speculative(backend, vocab, backend.context_length)
    if saved:
        counts, source = graph_op_counts(optimized), "optimized graph"
    else:
        counts, source = sum(by_provider.values(), Counter()), "profile"
    rss_after = current_rss_mb()
    result = ProviderResult(
        provider,
        "measured",
        ops=dict(sorted(counts.items())),
        inventory_source=source,
        optimized_graph=str(optimized) if saved else None,
        ops_by_provider={p: dict(sorted(c.items())) for p, c in by_provider.items()},
        session_seconds=round(session_seconds, 3),
        speed=speed,
        speculative=speculative,
        calibration=probe.speed() if probe else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        rss_growth_mb=None if rss_before is None or rss_after is None else round(rss_after - rss_before, 1),
    )
    result.checks = op_checks(provider, counts, bundle.manifest, OpPolicy.for_provider(provider, entry))
    return result
