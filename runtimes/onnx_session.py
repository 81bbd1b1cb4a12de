"""An onnxruntime session over a bundle's decode-step graph, as a backend for the shared decode loop
and scorer. Torch-free: needs only onnxruntime + numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.bundle_checks import check_target
from omnicoder.runtimes.graph_checks import ORT_ERRORS, check_allocation, check_session, ort_message
from omnicoder.runtimes.kv_cache import ContiguousKVCache, KVLayout, SharedKVCache
from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionKVCache, RetentionPolicy, query_scale
from omnicoder.runtimes.onnx_shared_binding import SharedBinding

from omnicoder.errors import OmniCoderError

RETENTION_CHUNK = 8  # tokens per call under a retention budget (the policy acts between calls)
MAX_THREADS = 1024
SHARED_KV_START = 256  # tokens the shared KV buffers hold at first (--kv-io shared)
LAST_ONLY = np.ones(1, np.int64)  # logits_to_keep = 1: the head runs on the last position only
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
        return ort.InferenceSession(
            str(bundle.file(bundle.graph["file"])),
            sess_options=session_options(threads, optimized_path),
            providers=resolve_providers(provider),
        )
    except ORT_ERRORS as exc:
        raise OmniCoderError(
            f"onnxruntime cannot load {bundle.graph['file']}: {ort_message(exc)}; re-export the bundle"
        ) from None


def _device_buffer(shape: tuple[int, ...], dtype: np.dtype):
    return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype)


def _ort_value(array: np.ndarray):
    """A C-level onnxruntime value over a numpy array (no copy: the array must outlive its use)."""
    return ort.OrtValue.ortvalue_from_numpy(array)._ortvalue


class OnnxBackend:
    """Batch-1 decode steps through the graph.

    Without a paging policy the KV stays in onnxruntime's buffers (ContiguousKVCache: each step's presents are
    the next step's pasts, no copies). With one, a PagedKVCache decides what each step attends to; prompts are
    then prefilled in page-sized chunks, and with a window generation may run past the model's context
    (positions stay absolute). A `--kv-io shared` bundle keeps its KV in fixed-capacity buffers that the graph
    updates in place (SharedKVCache, calls bound once by SharedBinding).
    """

    def __init__(
        self,
        bundle: Bundle,
        session: ort.InferenceSession,
        paging: PagingPolicy | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.check_graph(bundle, session)  # before anything is sized from the manifest
        self.session = session
        self.model_context = bundle.model["context_length"]
        self.n_mtp = bundle.model["n_mtp"]
        self.precision = bundle.manifest["precision"]  # how exact speculative decoding is (runtimes/speculative.py)
        self.layout = KVLayout(bundle.graph["kv"], bundle.model["n_layers"])
        self.paging = paging
        self.retention = retention
        self._shared: SharedBinding | None = None  # --kv-io shared bundles: calls bound once
        self.vocab = bundle.model["vocab_size"]
        self.logits_to_keep: str | None = bundle.graph.get("logits_to_keep")
        if bundle.shared_kv:
            if paging is not None or retention is not None:
                raise OmniCoderError(
                    "this bundle keeps its KV in shared fixed-capacity buffers (--kv-io shared); paging and "
                    "retention need a bundle exported with --kv-io present"
                )
            self.context_length = self.model_context
            check_allocation(
                self.model_context * self.layout.bytes_per_token(),
                f"this --kv-io shared bundle's KV buffers for its context of {self.model_context} tokens",
                "re-export it with a shorter --context or with --kv-io present",
            )
            # sized by what the run uses: a few hundred tokens, doubled as the context grows (not the whole context)
            self.cache = SharedKVCache(self.layout, min(self.model_context, SHARED_KV_START), _device_buffer)
        elif retention is not None:
            if paging is not None:
                raise OmniCoderError("--retention and KV paging flags are exclusive; pick one")
            if retention.policy == "learned" and not bundle.model["retention_head"]:
                raise OmniCoderError("--retention learned needs a model with a retention head; use streaming or h2o")
            self.context_length = 2**62  # positions stay absolute; the budget bounds what is attended
            self.cache = RetentionKVCache(self.layout, retention, query_scale(bundle.model))
        elif paging is None:
            self.context_length = self.model_context
            self.cache = ContiguousKVCache(self.layout)
        else:
            if paging.page_len > self.model_context:
                raise OmniCoderError(
                    f"--page-len {paging.page_len} is longer than the model's context ({self.model_context}); lower it"
                )
            attended = paging.window + (paging.sink_pages + paging.predicted_pages + 1) * paging.page_len
            if paging.window > 0 and attended > self.model_context:
                raise OmniCoderError(
                    f"--window {paging.window} with {paging.sink_pages} sink page(s) of {paging.page_len} tokens "
                    f"attends up to {attended} tokens, more than the model's context ({self.model_context}); "
                    "lower --window"
                )
            self.context_length = self.model_context if paging.window <= 0 else 2**62
            self.cache = PagedKVCache(self.layout, paging, select=self._select_pages)
        kv = bundle.graph["kv"]
        self.query_outputs = {}  # graph query output -> the layer's key input it scores against
        wants_queries = "--predicted-pages" if paging is not None and paging.predicted_pages > 0 else None
        if retention is not None and retention.policy == "h2o":
            wants_queries = "--retention h2o"
        if wants_queries and not kv.get("query"):
            raise OmniCoderError(
                f"{wants_queries} needs a bundle whose graph outputs queries; re-export it with --query-outputs"
            )
        if paging is not None and paging.predicted_pages > 0:
            keys = [names[0] for names in self.layout.key_slots]
            self.query_outputs = {kv["query"].format(layer=i): key for i, key in enumerate(keys)}
        if retention is not None and retention.policy == "h2o":
            self.query_outputs = {kv["query"].format(layer=i): i for i in range(bundle.model["n_layers"])}
        self.last_queries: dict[str, np.ndarray] = {}
        self.output_names = [o.name for o in session.get_outputs()]
        missing = sorted(set(self.query_outputs) - set(self.output_names))
        if missing:
            raise OmniCoderError(
                f"manifest.json names query outputs ({missing[0]}) the graph does not have; re-export the bundle "
                "with --query-outputs"
            )
        self._present_to_past = dict(zip(self.layout.outputs, self.layout.inputs, strict=True))

    def check_graph(self, bundle: Bundle, session) -> None:
        """The manifest against the loaded graph (runtimes/graph_checks.py); other sessions check their own."""
        if isinstance(session, ort.InferenceSession):
            check_session(bundle, session)

    def reset(self) -> None:
        self.cache.reset()
        self.last_queries = {}

    def _select_pages(self, cache: PagedKVCache, candidates: list[int]) -> list[int]:
        """Predicted pages: the previous step's last-token queries scored against each page's key summary."""
        if not self.last_queries:
            return []
        return cache.quest_scores(self.last_queries, candidates)

    def _in_key_space(self, query: np.ndarray) -> np.ndarray:
        """Queries as the stored keys see them (rotated like the keys when the KV rows are Hadamard-rotated)."""
        if self.layout.rotation != "hadamard":
            return query
        from omnicoder.runtimes.kv_format import rotate

        return rotate(query, self.layout.key_group)

    @property
    def cache_length(self) -> int:
        return self.cache.length

    def run(
        self, ids: np.ndarray, positions: np.ndarray, past: dict, mtp: bool = False, last_only: bool = False
    ) -> dict:
        """One graph call; returns logits (numpy), presents (onnxruntime values keyed by past input name) and,
        with `mtp`, the MTP heads' logits. `last_only`: the logits of the last position only, where the graph
        takes `logits_to_keep` (export/onnx_logits.py; the others return every position's).

        Feeds and fetches go through onnxruntime's C-level `run_with_ort_values`: the presents of one step are
        the pasts of the next without a copy, and a step costs about 100 us less Python than an IOBinding.
        """
        keep = [np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(positions, dtype=np.int64)]
        if isinstance(self.cache, SharedKVCache) and past is self.cache.feeds():
            return self._run_shared(keep[0], keep[1], mtp)
        feeds = {"input_ids": self._feed(keep[0]), "position_ids": self._feed(keep[1])}
        if last_only and self.logits_to_keep:
            feeds[self.logits_to_keep] = self._feed(LAST_ONLY)
        for name, value in past.items():
            if isinstance(value, np.ndarray):  # paged / retention caches assemble numpy feeds
                keep.append(np.ascontiguousarray(value))
                value = self._feed(keep[-1])
            feeds[name] = value
        signals = ["retention"] if getattr(self.cache, "wants_retention", False) else []
        wanted = ["logits", *(["mtp_logits"] if mtp else []), *signals, *self.layout.outputs, *self.query_outputs]
        values = dict(zip(wanted, self._run_values(feeds, wanted), strict=True))
        del keep  # the numpy buffers behind the feeds had to outlive the call
        presents = {self._present_to_past[name]: values[name] for name in self.layout.outputs}
        if self.retention is not None:  # retention signals go to the cache before it takes the new rows
            queries = {i: values[q].numpy()[0] for q, i in self.query_outputs.items()} or None
            self.cache.observe(values["retention"].numpy()[0] if signals else None, queries)
        elif self.query_outputs:
            self.last_queries = {
                key: self._in_key_space(values[q].numpy()[0, :, -1]) for q, key in self.query_outputs.items()
            }
        result = {"logits": values["logits"].numpy(), "presents": presents}
        if mtp:
            result["mtp_logits"] = values["mtp_logits"].numpy()
        return result

    def _run_shared(self, ids: np.ndarray, positions: np.ndarray, mtp: bool) -> dict:
        """One call with the KV buffers bound as both past and present (runtimes/onnx_shared_binding.py)."""
        self._check_shared_capacity(int(positions.max(initial=0)))
        if self._shared is None:
            pairs = [
                (p, o, self.cache.buffers[p]) for p, o in zip(self.layout.inputs, self.layout.outputs, strict=True)
            ]
            self._shared = SharedBinding(self.session, pairs, self.vocab, self.n_mtp)
        try:
            return self._shared.run(ids, positions, mtp)
        except ORT_ERRORS as exc:
            raise OmniCoderError(f"onnxruntime failed in a decode step: {ort_message(exc)}; {STEP_FIX}") from None

    def _feed(self, array: np.ndarray):
        """A numpy feed as the session takes it (a C-level onnxruntime value over the array, no copy)."""
        return _ort_value(array)

    def _check_shared_capacity(self, last_position: int) -> None:
        """Grow the shared buffers (doubling, up to the model's context) to hold `last_position`."""
        if last_position < self.cache.capacity:
            return
        if last_position >= self.model_context:
            raise OmniCoderError(f"the context is full: the model's context holds {self.model_context} tokens")
        capacity = max(2 * self.cache.capacity, 1 << last_position.bit_length())
        self.cache.grow(min(capacity, self.model_context))
        self._shared = None  # the calls bound the old buffers

    def _run_values(self, feeds: dict, wanted: list[str]) -> list:
        """The one call into the session: feeds from `_feed` or earlier outputs, the wanted outputs in order."""
        try:
            return list(self.session._sess.run_with_ort_values(feeds, wanted, None))
        except ORT_ERRORS as exc:
            raise OmniCoderError(f"onnxruntime failed in a decode step: {ort_message(exc)}; {STEP_FIX}") from None

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        if len(ids) == 1 and self._shared is not None:
            return self._step_shared_token(ids[0], positions[0])
        return self._forward(ids, positions, last_only=True)[-1]

    def _step_shared_token(self, token: int, position: int) -> np.ndarray:
        """A shared-KV decode step without the generic call path (about 30 us less Python per token)."""
        self._check_shared_capacity(position)
        if self._shared is None:  # the buffers grew: bind them again through the generic path
            return self._forward([token], [position], last_only=True)[-1]
        try:
            logits = self._shared.run_token(token, position)
        except ORT_ERRORS as exc:
            raise OmniCoderError(f"onnxruntime failed in a decode step: {ort_message(exc)}; {STEP_FIX}") from None
        self.cache.update({}, 1)
        return logits

    def step_all(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Like step, but the logits of every one of the tokens [T, V] (teacher forcing through the cache)."""
        return self._forward(ids, positions, last_only=False)

    def _forward(self, ids: list[int], positions: list[int], last_only: bool) -> np.ndarray:
        """The tokens through the cache, in chunks where a paging or retention policy acts between calls."""
        chunk = len(ids) if self.paging is None else self.paging.page_len
        if self.retention is not None:
            chunk = RETENTION_CHUNK
        logits = []
        for start in range(0, len(ids), chunk):
            part, where = ids[start : start + chunk], positions[start : start + chunk]
            result = self.run(np.array([part]), np.array([where]), self.cache.feeds(), last_only=last_only)
            self.cache.update(result["presents"], len(part))
            logits.append(result["logits"][0])
        return np.concatenate(logits) if len(logits) > 1 else logits[0]

    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Speculative decoding: one call over the tokens; logits [T, V] and MTP logits [T, n_mtp, V]."""
        if self.n_mtp == 0:
            raise OmniCoderError("--speculative needs a model with MTP heads; this bundle has none")
        result = self.run(np.array([ids]), np.array([positions]), self.cache.feeds(), mtp=True)
        self.cache.update(result["presents"], len(ids))
        return result["logits"][0], result["mtp_logits"][0]

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)

    def full_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for whole windows [B, W] from an empty cache (teacher forcing)."""
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        return self.run(ids, positions, self.layout.empty(ids.shape[0]))["logits"]
