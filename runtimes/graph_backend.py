"""A bundle's decode-step graph as a backend of the decode loop and the scorer, whatever runs it. Torch-free.

A `Program` runs one call (ids, positions, past KV -> logits, MTP logits, presents, extra outputs): an onnxruntime
session (runtimes/onnx_session.py) or an ExecuTorch `--kv io` method (runtimes/executorch_session.py). The KV cache
(runtimes/kv_cache.py, chosen in cache_factory.py) says what to feed, which outputs it wants, how many tokens a
call may take and whether its buffers are bound in place; this backend only moves tensors between the two.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.cache_factory import make_cache
from omnicoder.runtimes.kv_cache import as_numpy
from omnicoder.runtimes.kv_format import KVLayout
from omnicoder.runtimes.kv_paging import PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionPolicy

from omnicoder.errors import OmniCoderError
from omnicoder.io_contract import INPUT_IDS, LOGITS, MTP_LOGITS, POSITION_IDS

LAST_ONLY = np.ones(1, np.int64)  # logits_to_keep = 1: the head runs on the last position only


class Program(Protocol):
    """One decode-step graph call: feeds by input name (numpy arrays or earlier outputs) -> the wanted outputs."""

    output_names: list[str]
    max_seq_len: int | None  # the most tokens a call may take and attend (None: the model's context)

    def run(self, feeds: dict[str, Any], wanted: list[str]) -> list[Any]: ...


class InPlaceProgram(Program, Protocol):
    """A program that can keep the KV in fixed buffers the graph updates in place (--kv-io shared bundles;
    runtimes/onnx_session.py): calls after `bind_in_place` take and update those buffers."""

    def buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...

    def bind_in_place(self, kv_pairs: list[tuple[str, str, Any]], vocab: int, n_mtp: int) -> None: ...

    def run_in_place(self, ids: np.ndarray, positions: np.ndarray, mtp: bool) -> dict: ...

    def run_token(self, token: int, position: int) -> np.ndarray: ...


class GraphBackend:
    """Batch-1 decode steps through a bundle's graph and a KV cache (the decode loop's StepBackend, plus
    `verify`/`truncate` for speculative decoding and `step_all`/`full_logits` for scoring). A --kv-io shared
    bundle needs an `InPlaceProgram`; a program's `max_seq_len` bounds pages and, for a cache that keeps every
    token, the context."""

    def __init__(
        self,
        bundle: Bundle,
        program: Program,
        paging: PagingPolicy | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.program = program
        self.model_context = bundle.model["context_length"]
        self.n_mtp = bundle.model["n_mtp"]
        self.vocab = bundle.model["vocab_size"]
        self.precision = bundle.manifest["precision"]  # how exact speculative decoding is (runtimes/speculative.py)
        self.paging, self.retention = paging, retention
        self.layout = KVLayout(bundle.graph["kv"], bundle.model["n_layers"])
        self.logits_to_keep: str | None = bundle.graph.get("logits_to_keep")
        limit = program.max_seq_len
        if limit is not None and paging is not None and paging.page_len > limit:
            raise OmniCoderError(f"--page-len {paging.page_len} exceeds the program's limit ({limit})")
        make_buffer = program.buffer if bundle.shared_kv else None
        self.cache = make_cache(bundle, self.layout, paging, retention, program.output_names, make_buffer)
        self.context_length = self.cache.context_limit(min(self.model_context, limit or self.model_context))
        self._bound = False  # in-place KV: the program's calls are bound to the cache's buffers

    def reset(self) -> None:
        self.cache.reset()

    @property
    def cache_length(self) -> int:
        return self.cache.length

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)

    def run(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        past: dict,
        mtp: bool = False,
        last_only: bool = False,
        extra: tuple[str, ...] = (),
    ) -> dict:
        """One graph call over `past`: logits (numpy), presents (the program's values keyed by past input name),
        with `mtp` the MTP heads' logits, and the `extra` outputs (numpy, by name). `last_only`: the logits of the
        last position only, where the graph takes `logits_to_keep` (the others return every position's)."""
        ids, positions = np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(positions, np.int64)
        if self.cache.in_place and past is self.cache.feeds():
            return self._run_in_place(ids, positions, mtp)
        feeds = {INPUT_IDS: ids, POSITION_IDS: positions, **past}
        if last_only and self.logits_to_keep:
            feeds[self.logits_to_keep] = LAST_ONLY
        heads = [LOGITS, *([MTP_LOGITS] if mtp else []), *extra]
        values = self.program.run(feeds, heads + self.layout.outputs)
        result = {"logits": as_numpy(values[0]), "presents": dict(zip(self.layout.inputs, values[len(heads) :]))}
        if mtp:
            result["mtp_logits"] = as_numpy(values[1])
        if extra:
            result["extra"] = {name: as_numpy(value) for name, value in zip(extra, values[1 + mtp : len(heads)])}
        return result

    def _run_in_place(self, ids: np.ndarray, positions: np.ndarray, mtp: bool) -> dict:
        """One call with the cache's buffers bound as both past and present (bound again when they grew)."""
        if self.cache.reserve(int(positions.max(initial=0))) or not self._bound:
            buffers, layout = self.cache.feeds(), self.layout
            pairs = [(p, o, buffers[p]) for p, o in zip(layout.inputs, layout.outputs, strict=True)]
            self.program.bind_in_place(pairs, self.vocab, self.n_mtp)
            self._bound = True
        return self.program.run_in_place(ids, positions, mtp)

    def _advance(self, ids: list[int], positions: list[int], mtp: bool = False, last_only: bool = False) -> dict:
        """One call over the cache: it observes the outputs it asked for, then takes the new rows."""
        cache = self.cache
        result = self.run(np.array([ids]), np.array([positions]), cache.feeds(), mtp, last_only, cache.extra_outputs)
        if cache.extra_outputs:
            cache.observe_outputs(result["extra"])
        cache.update(result["presents"], len(ids))
        return result

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        if len(ids) == 1 and self._bound:
            return self._step_in_place(ids[0], positions[0])
        return self._forward(ids, positions, last_only=True)[-1]

    def _step_in_place(self, token: int, position: int) -> np.ndarray:
        """A decode step on bound buffers without the generic call path (about 30 us less Python per token)."""
        if self.cache.reserve(position):  # the buffers grew: bind them again through the generic path
            self._bound = False
            return self._forward([token], [position], last_only=True)[-1]
        logits = self.program.run_token(token, position)
        self.cache.update({}, 1)
        return logits

    def step_all(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Like step, but the logits of every one of the tokens [T, V] (teacher forcing through the cache)."""
        return self._forward(ids, positions, last_only=False)

    def _forward(self, ids: list[int], positions: list[int], last_only: bool) -> np.ndarray:
        """The tokens through the cache, in calls of at most the cache's `tokens_per_call`."""
        chunk = self.cache.tokens_per_call or len(ids)
        logits = []
        for start in range(0, len(ids), chunk):
            result = self._advance(ids[start : start + chunk], positions[start : start + chunk], last_only=last_only)
            logits.append(result["logits"][0])
        return np.concatenate(logits) if len(logits) > 1 else logits[0]

    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Speculative decoding: one call over the tokens; logits [T, V] and MTP logits [T, n_mtp, V]."""
        result = self._advance(ids, positions, mtp=self.n_mtp > 0)
        logits = result["logits"][0]
        return logits, result["mtp_logits"][0] if self.n_mtp else np.zeros((len(ids), 0, self.vocab), logits.dtype)

    def full_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for whole windows [B, W] from an empty cache (teacher forcing)."""
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        return self.run(ids, positions, self.layout.empty(ids.shape[0]))["logits"]
