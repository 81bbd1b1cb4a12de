"""A fixed calibration probe for the provider bench: speed floors relative to this machine, measured in the run.

On a shared CI machine the CPU and the load change from run to run, so a `"calibrated": true` profile gates on
the bundle's tok/s divided by this probe's speed, measured in the same process with the same provider, threads
and session options, interleaved round by round. The probe is a small decoder-shaped ONNX graph built here and
never changed (BLOCKS int4 up/down projections, which onnxruntime fuses to MatMulNBits, with residual and
LayerNormalization); its decode run takes one row, its prefill run `prefill_tokens` rows. It shares onnxruntime's
kernels but none of OmniCoder's code, so a lost fusion or a slower runner moves the ratio and the machine does
not. Building it needs the `onnx` package (`pip install 'omnicoder[bench]'`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from omnicoder.runtimes.bench_result import ProbeSpeed

from omnicoder.errors import OmniCoderError

HIDDEN = 256
FFN = 1024
BLOCKS = 4
BLOCK_SIZE = 32  # int4 quantization block, as the exporter's default
PROBE_VERSION = 1  # bump when the graph changes: recorded ratios are only comparable within one version


def probe_model_bytes() -> bytes:
    """The serialized probe graph (opset 21: int4 blocked DequantizeLinear)."""
    try:
        import ml_dtypes
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise OmniCoderError(
            "a calibrated profile needs the onnx package to build its probe; pip install 'omnicoder[bench]'"
        ) from None
    rng = np.random.default_rng(20261203)
    nodes, inits = [], []

    def int4_linear(name: str, x: str, rows: int, cols: int) -> str:
        codes = rng.integers(-8, 8, (rows, cols)).astype(np.int8)
        scales = np.full((rows // BLOCK_SIZE, cols), 2.0**-6, np.float32)
        weight = numpy_helper.from_array(codes.astype(ml_dtypes.int4), f"{name}.q")  # packed two per byte
        inits.extend([weight, numpy_helper.from_array(scales, f"{name}.s")])
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}.q", f"{name}.s"], [f"{name}.w"], axis=0, block_size=BLOCK_SIZE
            )
        )
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.y"]))
        return f"{name}.y"

    inits += [numpy_helper.from_array(np.ones(HIDDEN, np.float32), "ln.g")]
    inits += [numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "ln.b")]
    x = "x"
    for b in range(BLOCKS):
        up = int4_linear(f"b{b}.up", x, HIDDEN, FFN)
        nodes.append(helper.make_node("Sigmoid", [up], [f"b{b}.gate"]))
        nodes.append(helper.make_node("Mul", [up, f"b{b}.gate"], [f"b{b}.act"]))  # SiLU, as the models use
        down = int4_linear(f"b{b}.down", f"b{b}.act", FFN, HIDDEN)
        nodes.append(helper.make_node("Add", [x, down], [f"b{b}.res"]))
        out = "y" if b == BLOCKS - 1 else f"b{b}.out"
        nodes.append(helper.make_node("LayerNormalization", [f"b{b}.res", "ln.g", "ln.b"], [out], axis=-1))
        x = out
    graph = helper.make_graph(
        nodes,
        "omnicoder-calibration-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "rows", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "rows", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


class CalibrationProbe:
    """The probe's session, and the timings it collected (call `round` once per bench round)."""

    def __init__(self, provider: str, threads: int, prefill_rows: int, decode_runs: int, workdir: Path) -> None:
        import onnxruntime as ort
        from omnicoder.runtimes.onnx_session import resolve_providers, session_options

        path = workdir / "calibration_probe.onnx"
        path.write_bytes(probe_model_bytes())
        providers = resolve_providers(provider)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        data = np.random.default_rng(0).standard_normal((1, prefill_rows, HIDDEN)).astype(np.float32)
        self.prefill_input, self.decode_input = data, data[:, :1].copy()
        self.decode_runs = decode_runs
        self.steps: list[float] = []
        self.prefills: list[float] = []
        for _ in range(3):  # warm-up: kernels picked, buffers allocated
            self._run(self.prefill_input)
            self._run(self.decode_input)

    def _run(self, rows: np.ndarray) -> float:
        start = time.perf_counter()
        self.session.run(None, {"x": rows})
        return time.perf_counter() - start

    def round(self) -> None:
        """One round: a prefill-mode run and `decode_runs` one-row runs, timed."""
        self.prefills.append(self.prefill_input.shape[1] / self._run(self.prefill_input))
        self.steps += [self._run(self.decode_input) for _ in range(self.decode_runs)]

    def speed(self) -> ProbeSpeed:
        return ProbeSpeed(
            PROBE_VERSION,
            decode_runs_s=round(1 / statistics.median(self.steps), 1),
            prefill_rows_s=round(statistics.median(self.prefills), 1),
        )
