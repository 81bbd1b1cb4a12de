"""An onnxruntime session over an onnx bundle's decode-step graph: session options and providers, the
onnxruntime `Program` of the graph backend (runtimes/graph_backend.py) on public onnxruntime APIs, and
`OnnxBackend`, the graph backend over it. Torch-free: needs only onnxruntime + numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.bundle_checks import check_target
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.graph_checks import ORT_ERRORS, check_session, ort_message
from omnicoder.runtimes.kv_paging import PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionPolicy
from omnicoder.runtimes.onnx_shared_binding import SharedBinding, step_failed

from omnicoder.errors import OmniCoderError

MAX_THREADS = 1024


def session_options(
    threads: int = 0,
    optimized_path: str | Path | None = None,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
):
    if not 0 <= threads <= MAX_THREADS:
        raise OmniCoderError(f"--threads must be from 0 to {MAX_THREADS}, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = 4  # fatal only: our one-line error carries onnxruntime's message
    return options


def canonical_provider(name: str) -> str:
    """'xnnpack', 'XNNPACK' or 'XnnpackExecutionProvider' -> 'XnnpackExecutionProvider'."""
    wanted = name.lower().removesuffix("executionprovider")
    for provider in ort.get_all_providers():
        if provider.lower().removesuffix("executionprovider") == wanted:
            return provider
    known = ", ".join(p.removesuffix("ExecutionProvider") for p in ort.get_all_providers())
    raise OmniCoderError(f"unknown execution provider {name!r}; onnxruntime knows: {known}")


def resolve_providers(requested: str | None) -> list[str]:
    """The provider list for a session: the requested one (any spelling), then CPU as the fallback."""
    if requested is None:
        return ["CPUExecutionProvider"]
    name = canonical_provider(requested)
    available = ort.get_available_providers()
    if name not in available:
        raise OmniCoderError(f"--provider {requested} is not available here; available: {', '.join(available)}")
    return [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]


def create_session(
    bundle: Bundle, threads: int = 0, provider: str | None = None, optimized_path: str | Path | None = None
) -> ort.InferenceSession:
    if bundle.manifest["target"] != "onnx":
        raise OmniCoderError(f"{bundle.path} is a {bundle.manifest['target']} bundle; this runner needs an onnx bundle")
    check_target(bundle.manifest)
    try:
        return ort.InferenceSession(
            str(bundle.file(bundle.graph["file"])),
            sess_options=session_options(threads, optimized_path),
            providers=resolve_providers(provider),
        )
    except ORT_ERRORS as exc:
        raise OmniCoderError(
            f"onnxruntime cannot load {bundle.graph['file']}: {ort_message(exc)}; re-export the bundle"
        ) from None


class OnnxProgram:
    """A session as the graph backend's Program, on public onnxruntime APIs only. Each call binds its feeds
    (numpy wrapped without a copy by `OrtValue.ortvalue_from_numpy`, earlier outputs as they are) and its wanted
    outputs to one reused IOBinding and reads the outputs back as OrtValues, so one step's presents are the next
    step's pasts without a copy. (`run_with_ort_values` returns the same values but iterates onnxruntime's
    output vector, about 0.15 ms a call; --kv-io shared calls keep bindings of their own.)"""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self._binding = session.io_binding()

    def run(self, feeds: dict, wanted: list[str]) -> list:
        binding = self._binding
        values = {name: _ort_value(value) for name, value in feeds.items()}  # alive until the run: they hold the data
        try:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            for name in wanted:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
        except ORT_ERRORS as exc:
            raise step_failed(exc) from None
        return binding.get_outputs()

    def buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype)

    def bind_in_place(self, kv_pairs: list, vocab: int, n_mtp: int) -> SharedBinding:
        return SharedBinding(self.session, kv_pairs, vocab, n_mtp)


def _ort_value(value):
    """A feed as onnxruntime takes it: numpy wrapped without a copy (the value holds the array), OrtValues as is."""
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


class OnnxBackend(GraphBackend):
    """The graph backend over an onnxruntime session of an onnx bundle (runtimes/graph_backend.py)."""

    def __init__(
        self,
        bundle: Bundle,
        session: ort.InferenceSession,
        paging: PagingPolicy | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        check_session(bundle, session)  # the manifest against the loaded graph, before anything is sized from it
        self.session = session
        super().__init__(bundle, OnnxProgram(session), paging, retention)
