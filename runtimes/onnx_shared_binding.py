"""Calls of a `--kv-io shared` graph with everything bound once (onnxruntime IOBinding), for our runner.

The KV buffers are bound as both past and present; the token ids, positions and logits live in numpy arrays
that onnxruntime reads and writes directly, so a decode step costs two scalar writes and one run from Python
(no per-step binding, no output wrapping). One binding per (sequence length, MTP outputs) pair is kept for
the lengths that repeat (decode steps, speculative verification); longer calls (prefill chunks) use a
throw-away one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from omnicoder.runtimes.graph_checks import ORT_ERRORS, ort_message

from omnicoder.errors import OmniCoderError

KEEP_UP_TO = 16  # bindings for calls of at most this many tokens are kept
STEP_FIX = "the bundle's manifest may not describe its graph (graph.kv); re-export the bundle"


def step_failed(exc: BaseException) -> OmniCoderError:
    """The one-line error for an onnxruntime failure inside a decode step."""
    return OmniCoderError(f"onnxruntime failed in a decode step: {ort_message(exc)}; {STEP_FIX}")


@dataclass
class _Call:
    binding: ort.IOBinding
    ids: np.ndarray
    positions: np.ndarray
    logits: np.ndarray
    mtp_logits: np.ndarray | None
    values: list  # the OrtValues over the numpy arrays (kept alive with them)


class SharedBinding:
    def __init__(self, session: ort.InferenceSession, kv_pairs: list[tuple[str, str, object]], vocab: int, n_mtp: int):
        """`kv_pairs`: (past input, present output, buffer OrtValue) for every KV tensor."""
        self.session, self.kv_pairs, self.vocab, self.n_mtp = session, kv_pairs, vocab, n_mtp
        self._calls: dict[tuple[int, bool], _Call] = {}

    def _bind(self, tokens: int, mtp: bool) -> _Call:
        binding = self.session.io_binding()
        ids, positions = np.zeros((1, tokens), np.int64), np.zeros((1, tokens), np.int64)
        logits = np.empty((1, tokens, self.vocab), np.float32)
        mtp_logits = np.empty((1, tokens, self.n_mtp, self.vocab), np.float32) if mtp else None
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (ids, positions, logits)]
        binding.bind_ortvalue_input("input_ids", values[0])
        binding.bind_ortvalue_input("position_ids", values[1])
        binding.bind_ortvalue_output("logits", values[2])
        if mtp_logits is not None:
            values.append(ort.OrtValue.ortvalue_from_numpy(mtp_logits))
            binding.bind_ortvalue_output("mtp_logits", values[-1])
        for past, present, buffer in self.kv_pairs:
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        return _Call(binding, ids, positions, logits, mtp_logits, values)

    def run_token(self, token: int, position: int) -> np.ndarray:
        """Logits [V] of one decode step (the common case, kept to two scalar writes and the run)."""
        try:
            call = self._calls.get((1, False)) or self._calls.setdefault((1, False), self._bind(1, False))
            call.ids[0, 0], call.positions[0, 0] = token, position
            self.session.run_with_iobinding(call.binding)
        except ORT_ERRORS as exc:
            raise step_failed(exc) from None
        return call.logits[0, 0].copy()

    def run(self, ids: np.ndarray, positions: np.ndarray, mtp: bool) -> dict:
        """Logits [1, T, V] (and MTP logits [1, T, n_mtp, V]) of one batch-1 call; the KV is updated in place."""
        key = (ids.shape[1], mtp)
        try:
            call = self._calls.get(key) or self._bind(*key)
            if key[0] <= KEEP_UP_TO:
                self._calls[key] = call
            call.ids[...] = ids
            call.positions[...] = positions
            self.session.run_with_iobinding(call.binding)
        except ORT_ERRORS as exc:
            raise step_failed(exc) from None
        result = {"logits": call.logits.copy(), "presents": {}}
        if mtp:
            result["mtp_logits"] = call.mtp_logits.copy()
        return result
