"""An ExecuTorch program (a bundle's model.pte) as a backend of the shared decode loop and scorer.

`--kv buffer` bundles (`ExecuTorchBufferBackend`) keep the KV cache inside the program: a call passes the tokens
and the position of the first (`input_pos`, ExecuTorch's LLM convention); reset and `truncate` only move that
position (attention never reads slots at or after it). `--kv io` bundles take past/present KV like the ONNX graph:
the graph backend (runtimes/graph_backend.py) over `ExecuTorchProgram`, with every KV-cache kind. ExecuTorch's
Python runtime loads torch; it is imported lazily, so importing this module stays torch-free.
"""

from __future__ import annotations

import numpy as np
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.kv_paging import PagingPolicy

from omnicoder.errors import OmniCoderError


def executorch_section(bundle: Bundle) -> dict:
    if bundle.manifest["target"] != "executorch":
        raise OmniCoderError(
            f"{bundle.path} is a {bundle.manifest['target']} bundle; this runner needs an executorch bundle"
        )
    from omnicoder.runtimes.bundle_checks import check_target

    check_target(bundle.manifest)  # a .pte with graph.executorch (kv_mode, max_seq_len)
    return bundle.graph["executorch"]


def load_method(bundle: Bundle, threads: int = 0, method: str = "forward"):
    """Load the bundle's program with ExecuTorch's Python runtime (+ its llama:: custom-op kernels)."""
    executorch_section(bundle)
    try:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama:: kernels)
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.kernels import quantized  # noqa: F401  (quantized_decomposed:: kernels: quantized embeddings)
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise OmniCoderError(
            f"this runner needs the ExecuTorch runtime ({exc.name}); pip install 'omnicoder[executorch]'"
        ) from None
    if threads < 0:
        raise OmniCoderError(f"--threads must be >= 0, got {threads}")
    if threads > 0:
        _unsafe_reset_threadpool(threads)
    try:
        program = Runtime.get().load_program(str(bundle.file(bundle.graph["file"])))
        loaded = program.load_method(method)
    except RuntimeError as exc:
        raise OmniCoderError(f"ExecuTorch cannot load {bundle.graph['file']}: {str(exc).splitlines()[0]}") from None
    if loaded is None:
        raise OmniCoderError(f"{bundle.graph['file']} has no method {method!r}; re-export the bundle")
    return loaded


def _tensor(array: np.ndarray):
    """numpy -> torch, copying only when needed; empty arrays get fresh tensors (ExecuTorch rejects numpy's 0
    strides)."""
    import torch

    if array.size == 0:
        return torch.zeros(array.shape, dtype=torch.from_numpy(np.zeros(0, array.dtype)).dtype)
    return torch.from_numpy(np.require(array, requirements=("C_CONTIGUOUS", "WRITEABLE")))


class ExecuTorchBufferBackend:
    """Batch-1 steps through a program whose KV cache is its own mutable buffers."""

    paging = None

    def __init__(self, bundle: Bundle, method) -> None:
        section = executorch_section(bundle)
        if section["kv_mode"] != "buffer":
            raise OmniCoderError("internal: ExecuTorchBufferBackend needs a --kv buffer bundle")
        self.method = method
        self.context_length = section["max_seq_len"]
        self._length = 0

    def reset(self) -> None:
        self._length = 0

    @property
    def cache_length(self) -> int:
        return self._length

    def truncate(self, length: int) -> None:
        """Keep the first `length` cached tokens (a chat rolling back a reply the template rewrote). Like reset,
        only the position moves: the slots after it are overwritten before attention can read them."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        self._length = length

    def run(self, ids: list[int], start: int) -> np.ndarray:
        """Logits [T, V] of tokens at positions start .. start + T - 1 (writes their KV at those slots)."""
        if start + len(ids) > self.context_length:
            raise OmniCoderError(
                f"{start + len(ids)} tokens exceed the program's KV capacity ({self.context_length}); "
                "re-export with a larger --max-seq-len"
            )
        out = self.method.execute([_tensor(np.array([ids], np.int64)), _tensor(np.array([start], np.int64))])
        return out[0][0].numpy().copy()

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        return self.step_all(ids, positions)[-1]

    def step_all(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Logits of every token [T, V]; positions must continue the cache (slot == position)."""
        if positions != list(range(self._length, self._length + len(ids))):
            raise OmniCoderError("an in-program KV cache takes consecutive positions that continue the cache")
        logits = self.run(ids, self._length)
        self._length += len(ids)
        return logits

    def full_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for whole windows [B, W] from position 0 (teacher forcing), one row per call."""
        self.reset()
        return np.stack([self.run(row.tolist(), 0) for row in ids])


class ExecuTorchProgram:
    """A `--kv io` program's method as the graph backend's Program: numpy feeds in the graph's input order, the
    wanted outputs back as numpy arrays; a batch runs one row per call (the program takes batch 1)."""

    def __init__(self, bundle: Bundle, method) -> None:
        section = executorch_section(bundle)
        if section["kv_mode"] != "io":
            raise OmniCoderError("internal: ExecuTorchProgram needs a --kv io bundle")
        self.method, self.max_seq_len = method, section["max_seq_len"]
        self.input_names = [t["name"] for t in bundle.graph["inputs"]]
        self.output_names = [t["name"] for t in bundle.graph["outputs"]]

    def run(self, feeds: dict[str, np.ndarray], wanted: list[str]) -> list[np.ndarray]:
        inputs = [feeds[name] for name in self.input_names]
        if inputs[0].shape[0] > 1:
            rows = [self.run({name: f[r : r + 1] for name, f in feeds.items()}, wanted) for r in range(len(inputs[0]))]
            return [np.concatenate(outputs) for outputs in zip(*rows, strict=True)]
        if inputs[0].shape[1] > self.max_seq_len or any(f.shape[2] > self.max_seq_len for f in inputs[2:]):
            raise OmniCoderError(f"a call exceeds the program's sequence limit ({self.max_seq_len}); lower --window")
        outputs = dict(zip(self.output_names, self.method.execute([_tensor(f) for f in inputs]), strict=True))
        return [outputs[name].numpy().copy() for name in wanted]


def create_backend(bundle: Bundle, threads: int = 0, paging: PagingPolicy | None = None, retention=None):
    """The backend for the bundle's KV mode."""
    section = executorch_section(bundle)
    if section["kv_mode"] == "buffer" and (paging is not None or retention is not None):
        raise OmniCoderError(
            "KV paging and retention flags (--window, --retention, ...) need a --kv io bundle; this one keeps its KV "
            "cache inside the program (--kv buffer); re-export with --kv io"
        )
    method = load_method(bundle, threads)
    if section["kv_mode"] == "buffer":
        return ExecuTorchBufferBackend(bundle, method)
    return GraphBackend(bundle, ExecuTorchProgram(bundle, method), paging, retention)
