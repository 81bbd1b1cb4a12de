"""What onnxruntime's CPU kernels leave on the table for int4 decode (the evidence behind the peer bench's ceiling).

    python benchmarks/int4_kernel_options.py [--threads 1] [--rounds 5] [--out docs/results]

Batch-1, one-token (M = 1) calls, the shapes of the peer bench's Llama models (benchmarks/compare_peers.py):
1. MatMulNBits int4 over the layer stack (merged q/k/v, o, merged gate/up, down per layer) and over the 32k LM
   head, at block sizes 32 / 64 / 128 (256 for the head) and accuracy levels 0 (fp32 compute) and 4 (int8
   compute), relative to what both our exporter and onnxruntime-genai's builder emit (block 32, level 4);
2. the 8-bit alternatives for the LM head: MatMulNBits bits=8 and DynamicQuantizeMatMul (int8 per channel);
3. whether onnxruntime's fused decode ops (MatMulNBitsMlp, MatMulNBitsQkv, com.microsoft SwiGLU, ONNX SwiGLU-28)
   have a kernel on the CPU execution provider.
Random codes and scales: the kernels' speed does not depend on the values. Sessions are interleaved over
`--rounds` rounds (median kept). Writes DIR/int4_kernel_options.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

SHAPES = {  # (K, N) of the quantized linears of one layer, and the number of layers
    "20m": ([(256, 512), (256, 256), (256, 1536), (768, 256)], 6),
    "110m": ([(768, 1280), (768, 768), (768, 4096), (2048, 768)], 12),
}
VOCAB = 32000
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _model(nodes: list, inits: list, k: int, opsets=OPSETS) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _nbits(rng, name: str, x: str, k: int, n: int, bits: int, block: int, level: int):
    codes = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * k // block, dtype=np.float32) + 0.5) * 0.01
    node = helper.make_node(
        "MatMulNBits", [x, f"{name}_b", f"{name}_s"], [f"{name}_y"], domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block, accuracy_level=level,
    )  # fmt: skip
    return node, [numpy_helper.from_array(codes, f"{name}_b"), numpy_helper.from_array(scales, f"{name}_s")]


def layer_stack(size: str, block: int, level: int) -> tuple[bytes, int]:
    """The layers' MatMulNBits chained (a Slice where one output is wider than the next input)."""
    shapes, layers = SHAPES[size]
    rng, nodes, inits, x = np.random.default_rng(0), [], [], "x"
    for layer in range(layers):
        for i, (k, n) in enumerate(shapes):
            name = f"l{layer}_{i}"
            node, weights = _nbits(rng, name, x, k, n, 4, block, level)
            nodes.append(node)
            inits += weights
            x, next_k = node.output[0], shapes[(i + 1) % len(shapes)][0]
            if n != next_k:
                for suffix, value in (("start", 0), ("end", next_k), ("axis", -1)):
                    inits.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}_{suffix}"))
                ends = [x, f"{name}_start", f"{name}_end", f"{name}_axis"]
                nodes.append(helper.make_node("Slice", ends, [f"{name}_z"]))
                x = f"{name}_z"
    return _model(nodes, inits, shapes[0][0]), shapes[0][0]


def lm_head(k: int, kind: str, block: int = 32, level: int = 4) -> tuple[bytes, int]:
    rng = np.random.default_rng(0)
    if kind == "dynamic-int8":
        weights = rng.integers(-127, 128, (k, VOCAB), dtype=np.int8)
        scales = (rng.random(VOCAB, dtype=np.float32) + 0.5) * 0.01
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s"], ["y"], domain="com.microsoft")
        return _model([node], [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(scales, "s")], k), k
    node, inits = _nbits(rng, "head", "x", k, VOCAB, 8 if kind == "int8" else 4, block, level)
    return _model([node], inits, k), k


def fused_op_on_cpu(op: str) -> str:
    """'kernel' when the CPU provider can create a session with `op`, else onnxruntime's reason (one line)."""
    k, n = 64, 64
    rng = np.random.default_rng(0)
    if op == "SwiGLU (ONNX 28)":
        nodes, inits, opsets = [helper.make_node("SwiGLU", ["x", "x"], ["y"])], [], [helper.make_opsetid("", 28)]
    elif op == "SwiGLU (com.microsoft)":
        nodes, inits, opsets = [helper.make_node("SwiGLU", ["x"], ["y"], domain="com.microsoft")], [], OPSETS
    else:
        gate, g_inits = _nbits(rng, "g", "x", k, n, 4, 32, 4)
        up, u_inits = _nbits(rng, "u", "x", k, n, 4, 32, 4)
        inits, opsets = [*g_inits, *u_inits, numpy_helper.from_array(np.ones(k, np.float32), "norm")], OPSETS
        common = dict(domain="com.microsoft", K=k, bits=4, block_size=32, accuracy_level=4, epsilon=1e-6)
        if op == "MatMulNBitsMlp":
            ins = ["x", "", "norm", "g_b", "g_s", "", "u_b", "u_s"]
            nodes = [helper.make_node(op, ins, ["y"], N=n, activation="silu", **common)]
        else:  # MatMulNBitsQkv
            ins = ["x", "", "norm", "g_b", "g_s", "", "u_b", "u_s", "", "u_b", "u_s"]
            nodes = [helper.make_node(op, ins, ["y", "k", "v"], Nq=n, Nkv=n, **common)]
    model = helper.make_model(
        helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
        ),
        opset_imports=opsets,
    )  # fmt: skip
    model.ir_version = 10
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types; the message is what is reported
        return str(exc).split(" : ")[-1].splitlines()[0][:120]
    return "kernel"


def time_sessions(models: dict[str, tuple[bytes, int]], threads: int, rounds: int, calls: int) -> dict[str, float]:
    """Median µs per call of each model, sessions interleaved over rounds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    sessions = {}
    for name, (model, k) in models.items():
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        sessions[name] = (session, {"x": np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)})
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in tqdm(range(rounds), desc="rounds", leave=False):
        for name, (session, feed) in sessions.items():
            for _ in range(5):
                session.run(None, feed)
            start = time.perf_counter()
            for _ in range(calls):
                session.run(None, feed)
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=100, help="calls per session and round")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()
    results: dict = {"threads": args.threads, "onnxruntime": ort.__version__, "layers": {}, "lm_head": {}}
    for size in tqdm(SHAPES, desc="layer stacks"):
        models = {f"block {b}, level {lv}": layer_stack(size, b, lv) for b in (32, 64, 128) for lv in (4, 0)}
        results["layers"][size] = time_sessions(models, args.threads, args.rounds, args.calls // 5)
    for k in tqdm((256, 768), desc="LM heads"):
        models = {f"int4 block {b}, level 4": lm_head(k, "int4", b) for b in (32, 64, 128, 256)}
        models["int4 block 32, level 0"] = lm_head(k, "int4", 32, 0)
        models["int8 MatMulNBits block 32, level 4"] = lm_head(k, "int8")
        models["int8 DynamicQuantizeMatMul, per channel"] = lm_head(k, "dynamic-int8")
        results["lm_head"][f"{k} x {VOCAB}"] = time_sessions(models, args.threads, args.rounds, args.calls)
    ops = ("MatMulNBitsMlp", "MatMulNBitsQkv", "SwiGLU (com.microsoft)", "SwiGLU (ONNX 28)")
    results["fused_ops_on_cpu"] = {op: fused_op_on_cpu(op) for op in ops}
    baseline = {"layers": "block 32, level 4", "lm_head": "int4 block 32, level 4"}
    for group in ("layers", "lm_head"):
        for shape, rows in results[group].items():
            print(f"\n{group} {shape} (µs per call; speed-up vs {baseline[group]}, what both exporters emit)")
            for name, us in rows.items():
                print(f"  {name:42s} {us:9.1f}  {rows[baseline[group]] / us:5.2f}x")
    print("\nfused decode ops on the CPU provider:")
    for op, verdict in results["fused_ops_on_cpu"].items():
        print(f"  {op:24s} {verdict}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["command"] = "python benchmarks/int4_kernel_options.py " + " ".join(
        f"--{k} {v}" for k, v in (("threads", args.threads), ("rounds", args.rounds), ("out", args.out))
    )
    (out / "int4_kernel_options.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
