"""An onnxruntime session over an onnx bundle's decode-step graph (session options, providers, checked against
the manifest) and `OnnxProgram`, the graph backend's Program over it (runtimes/graph_backend.py): a backend is
`GraphBackend(bundle, OnnxProgram(create_session(bundle)))`. Torch-free: needs only onnxruntime + numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.bundle_checks import check_target
from omnicoder.runtimes.graph_checks import ORT_ERRORS, check_session, ort_message

from omnicoder.errors import OmniCoderError
from omnicoder.io_contract import INPUT_IDS, LOGITS, MTP_LOGITS, POSITION_IDS

MAX_THREADS = 1024
KEEP_UP_TO = 16  # in-place bindings of calls of at most this many tokens are kept
STEP_FIX = "the bundle's manifest may not describe its graph (graph.kv); re-export the bundle"


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
        session = ort.InferenceSession(
            str(bundle.file(bundle.graph["file"])),
            sess_options=session_options(threads, optimized_path),
            providers=resolve_providers(provider),
        )
    except ORT_ERRORS as exc:
        raise OmniCoderError(
            f"onnxruntime cannot load {bundle.graph['file']}: {ort_message(exc)}; re-export the bundle"
        ) from None
    check_session(bundle, session)  # the manifest against the loaded graph, before anything is sized from it
    return session


class OnnxProgram:
    """A session as the graph backend's Program, on public onnxruntime APIs only. A call binds its feeds (numpy
    wrapped without a copy, earlier outputs as they are) and wanted outputs to one reused IOBinding and returns
    the outputs as OrtValues, so one step's presents are the next step's pasts without a copy.

    In-place calls (`--kv-io shared`, after `bind_in_place`) bind the KV buffers as both past and present, and
    ids, positions and logits as numpy arrays onnxruntime reads and writes directly: a decode step is two scalar
    writes and a run. Their bindings are kept for calls of at most KEEP_UP_TO tokens (decode steps, verify calls)."""

    max_seq_len = None  # no call limit of its own: the model's context bounds a call

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self._binding = session.io_binding()
        self._calls: dict[tuple[int, bool], tuple] = {}  # in-place: (tokens, mtp) -> (binding, arrays, OrtValues)

    def run(self, feeds: dict, wanted: list[str]) -> list:
        binding = self._binding
        values = {  # numpy wrapped without a copy, OrtValues as they are; alive until the run: they hold the data
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for name, v in feeds.items()
        }
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

    def bind_in_place(self, kv_pairs: list[tuple[str, str, ort.OrtValue]], vocab: int, n_mtp: int) -> None:
        """In-place calls from now on bind `kv_pairs`: (past input, present output, buffer) of every KV tensor."""
        self._kv_pairs, self._vocab, self._n_mtp, self._calls = kv_pairs, vocab, n_mtp, {}

    def _in_place_call(self, tokens: int, mtp: bool) -> tuple:
        key = (tokens, mtp)
        if key in self._calls:
            return self._calls[key]
        arrays = {INPUT_IDS: np.zeros((1, tokens), np.int64), POSITION_IDS: np.zeros((1, tokens), np.int64)}
        arrays[LOGITS] = np.empty((1, tokens, self._vocab), np.float32)
        if mtp:
            arrays[MTP_LOGITS] = np.empty((1, tokens, self._n_mtp, self._vocab), np.float32)
        binding, values = self.session.io_binding(), {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
        for name, value in values.items():
            bind = binding.bind_ortvalue_input if name in (INPUT_IDS, POSITION_IDS) else binding.bind_ortvalue_output
            bind(name, value)
        for past, present, buffer in self._kv_pairs:
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        call = binding, arrays, values
        if tokens <= KEEP_UP_TO:
            self._calls[key] = call
        return call

    def run_in_place(self, ids: np.ndarray, positions: np.ndarray, mtp: bool) -> dict:
        """Logits [1, T, V] (and MTP logits [1, T, n_mtp, V]) of one batch-1 call; the KV is updated in place."""
        try:
            binding, arrays, _ = self._in_place_call(ids.shape[1], mtp)
            arrays[INPUT_IDS][...], arrays[POSITION_IDS][...] = ids, positions
            self.session.run_with_iobinding(binding)
        except ORT_ERRORS as exc:
            raise step_failed(exc) from None
        result = {"logits": arrays[LOGITS].copy(), "presents": {}}
        if mtp:
            result["mtp_logits"] = arrays[MTP_LOGITS].copy()
        return result

    def run_token(self, token: int, position: int) -> np.ndarray:
        """Logits [V] of one in-place decode step (the common case, kept to two scalar writes and the run)."""
        try:
            binding, arrays, _ = self._calls.get((1, False)) or self._in_place_call(1, False)
            arrays[INPUT_IDS][0, 0], arrays[POSITION_IDS][0, 0] = token, position
            self.session.run_with_iobinding(binding)
        except ORT_ERRORS as exc:
            raise step_failed(exc) from None
        return arrays[LOGITS][0, 0].copy()


def step_failed(exc: BaseException) -> OmniCoderError:
    """The one-line error for an onnxruntime failure inside a decode step."""
    return OmniCoderError(f"onnxruntime failed in a decode step: {ort_message(exc)}; {STEP_FIX}")
