"""Lower `omnicoder.QuantLinear` placeholder nodes to the ONNX forms that runtimes fuse, and store
float weights as fp16.

Forms (the codes and scales come from `omnicoder.quant`, so every form computes the same weights):
- int4 "qdq": an INT4 initializer [K, N] -> DequantizeLinear(axis=0, block_size=32) -> MatMul. Standard
  ONNX (opset >= 21); onnxruntime fuses it into MatMulNBits at optimization level EXTENDED or ALL.
- int4 "matmulnbits": com.microsoft.MatMulNBits directly (uint4 codes with the default zero point 8).
- asymmetric int4 (zero points): MatMulNBits with packed uint4 zero points (integers), or for float ones (a GGUF
  Q4_1 block) MatMulNBits plus a per-block offset term; 8-bit blocks (a GGUF Q8_0 tensor): MatMulNBits bits=8.
- int8 "dynamic": DynamicQuantizeLinear(x) -> MatMulInteger(u8 x s8) -> Cast -> Mul(x_scale * w_scale);
  onnxruntime fuses it into DynamicQuantizeMatMul (for providers with no int4 kernels).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT4_FORMS = ("qdq", "matmulnbits")


def _consumers(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _int4_qdq(node, x, codes, scales, block, out, prefix):
    # packed two codes per byte in raw_data (make_tensor would store one int32 varint per code)
    weight = numpy_helper.from_array(np.ascontiguousarray(codes.T).astype(ml_dtypes.int4), prefix + "_w")
    scale = numpy_helper.from_array(np.ascontiguousarray(scales.T).astype(np.float32), prefix + "_scale")
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [weight.name, scale.name],
            [prefix + "_wf"],
            name=prefix + "_dq",
            axis=0,
            block_size=block,
        ),
        helper.make_node("MatMul", [x, prefix + "_wf"], [out], name=prefix + "_matmul"),
    ]
    return nodes, [weight, scale]


def _fp16_exact(values: np.ndarray) -> bool:
    """True when every value is a float16 number (a GGUF block's scale or minimum): it can be stored in half."""
    return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def _float_input(values: np.ndarray, name: str) -> tuple[list, list]:
    """A float32 graph value `name`: stored as float16 + Cast when that is lossless (onnxruntime folds the Cast
    when it loads the session, before MatMulNBits packs its inputs), else as a float32 initializer."""
    values = values.astype(np.float32)
    if not _fp16_exact(values):
        return [], [numpy_helper.from_array(values, name)]
    half = numpy_helper.from_array(values.astype(np.float16), name + "_fp16")
    return [helper.make_node("Cast", [half.name], [name], name=name + "_to_fp32", to=TensorProto.FLOAT)], [half]


def _matmulnbits(x, blob, scales, zeros, k, n, bits, block, out, prefix, accuracy_level):
    """One com.microsoft.MatMulNBits node over packed codes `blob` [N, K / block, bytes], its initializers."""
    scale_nodes, tensors = _float_input(scales.reshape(-1), prefix + "_scale")
    tensors.insert(0, numpy_helper.from_array(blob, prefix + "_qw"))
    if zeros is not None:
        tensors.append(numpy_helper.from_array(zeros.reshape(-1), prefix + "_zp"))
    node = helper.make_node(
        "MatMulNBits",
        [x, prefix + "_qw", prefix + "_scale", *([prefix + "_zp"] if zeros is not None else [])],
        [out],
        name=prefix + ("_mnb" if bits == 4 else "_mnb8"),
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    return [*scale_nodes, node], tensors


def _pack_int4(unsigned: np.ndarray, block: int) -> np.ndarray:
    """uint4 codes [N, K] -> MatMulNBits' blob [N, K / block, block / 2] (low nibble first)."""
    n, k = unsigned.shape
    blocks = unsigned.astype(np.uint8).reshape(n, k // block, block)
    return (blocks[..., 0::2] | (blocks[..., 1::2] << 4)).astype(np.uint8)


def _int4_matmulnbits(node, x, codes, scales, block, out, prefix, accuracy_level):
    n, k = codes.shape
    blob = _pack_int4((codes.astype(np.int16) + 8), block)
    return _matmulnbits(x, blob, scales, None, k, n, 4, block, out, prefix, accuracy_level)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint4 values [N, M] -> bytes [N, ceil(M / 2)], the low nibble first (MatMulNBits' packing)."""
    n, m = values.shape
    padded = np.zeros((n, m + m % 2), np.uint8)
    padded[:, :m] = values
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def _block_sums(k: int, block: int) -> onnx.TensorProto:
    """E [K, K / block] with E[i, i // block] = 1: x @ E sums each block of x (shared by layers of one K)."""
    ones = np.zeros((k, k // block), np.float32)
    ones[np.arange(k), np.arange(k) // block] = 1.0
    return numpy_helper.from_array(ones, f"block_sums_{k}_{block}")


def _int4_matmulnbits_offsets(x, codes, scales, zeros, block, out, prefix, accuracy_level):
    """w = d * (q - z) with float z (a GGUF Q4_1 block, z = -m / d) as the fast form of MatMulNBits plus a
    per-block offset: x @ w.T = MatMulNBits(x, q, d) [zero point 8] + (x @ E) @ (m + 8 d).T, where m = -d z and
    x @ E sums x over each block. onnxruntime's MatMulNBits has no fast kernel for float zero points (about 50x
    slower at one token here, docs/benchmarks.md); this form keeps the file's exact grid at the speed of Q4_0.
    The file's half-precision d and m are stored as such; m + 8 d is folded by onnxruntime at load."""
    n, k = codes.shape
    nodes, tensors = _matmulnbits(
        x, _pack_int4(codes, block), scales, None, k, n, 4, block, prefix + "_q", prefix, accuracy_level
    )
    minimum = -scales * zeros
    half = minimum.astype(np.float16).astype(np.float32)
    if _fp16_exact(scales) and np.allclose(half, minimum, rtol=1e-6, atol=0):
        minimum = half  # the file's own half-precision m (d z gives it back to within an fp32 ulp)
    min_nodes, min_tensors = _float_input(np.ascontiguousarray(minimum.T), prefix + "_min")
    shape = numpy_helper.from_array(np.array(scales.shape, np.int64), prefix + "_scale_shape")
    sums = _block_sums(k, block)
    eight = numpy_helper.from_array(np.array(8.0, np.float32), "offset_eight")
    nodes += [
        *min_nodes,
        helper.make_node("Reshape", [prefix + "_scale", shape.name], [prefix + "_d"], name=prefix + "_d"),
        helper.make_node("Transpose", [prefix + "_d"], [prefix + "_dT"], name=prefix + "_dT", perm=[1, 0]),
        helper.make_node("Mul", [prefix + "_dT", eight.name], [prefix + "_8d"], name=prefix + "_8d"),
        helper.make_node("Add", [prefix + "_min", prefix + "_8d"], [prefix + "_offsets"], name=prefix + "_offsets"),
        helper.make_node("MatMul", [x, sums.name], [prefix + "_bsum"], name=prefix + "_bsum"),
        helper.make_node("MatMul", [prefix + "_bsum", prefix + "_offsets"], [prefix + "_off"], name=prefix + "_off"),
        helper.make_node("Add", [prefix + "_q", prefix + "_off"], [out], name=prefix + "_add"),
    ]
    return nodes, [*tensors, *min_tensors, shape, sums, eight]


def _int4_matmulnbits_zp(node, x, codes, scales, zeros, block, out, prefix, accuracy_level):
    """Asymmetric int4: MatMulNBits with packed uint4 zero points when every zero point is an integer in
    [0, 15] (asymmetric quantization), else the offset form above (a GGUF Q4_1 block: w = d * q + m)."""
    n, k = codes.shape
    if not (np.array_equal(zeros, np.round(zeros)) and zeros.min() >= 0 and zeros.max() <= 15):
        return _int4_matmulnbits_offsets(x, codes, scales, zeros, block, out, prefix, accuracy_level)
    zero_points = _pack_nibbles(zeros.astype(np.uint8))
    return _matmulnbits(x, _pack_int4(codes, block), scales, zero_points, k, n, 4, block, out, prefix, accuracy_level)


def _int8_matmulnbits(node, x, codes, scales, block, out, prefix, accuracy_level):
    """Symmetric 8-bit blocks (a GGUF Q8_0 tensor) as MatMulNBits bits=8 (uint8 codes, default zero point 128)."""
    n, k = codes.shape
    blob = (codes.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // block, block)
    return _matmulnbits(x, blob, scales, None, k, n, 8, block, out, prefix, accuracy_level)


def _int8_dynamic(node, x, codes, scales, out, prefix):
    weight = numpy_helper.from_array(np.ascontiguousarray(codes.T).astype(np.int8), prefix + "_w")
    w_scale = numpy_helper.from_array(scales[:, 0].astype(np.float32), prefix + "_wscale")
    nodes = [
        helper.make_node(
            "DynamicQuantizeLinear", [x], [prefix + "_xq", prefix + "_xs", prefix + "_xzp"], name=prefix + "_dql"
        ),
        helper.make_node(
            "MatMulInteger", [prefix + "_xq", weight.name, prefix + "_xzp"], [prefix + "_acc"], name=prefix + "_mmi"
        ),
        helper.make_node("Cast", [prefix + "_acc"], [prefix + "_accf"], name=prefix + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [prefix + "_xs", w_scale.name], [prefix + "_s"], name=prefix + "_smul"),
        helper.make_node("Mul", [prefix + "_accf", prefix + "_s"], [out], name=prefix + "_mul"),
    ]
    return nodes, [weight, w_scale]


def lower_quant_linears(
    model: onnx.ModelProto, int4_form: str = "qdq", accuracy_level: int = 4, matmulnbits_rows: int = 0
) -> int:
    """Replace every omnicoder.QuantLinear node in place; returns how many were lowered. Layers with
    `matmulnbits_rows` output features (the LM head, whose codes the embedding shares) become MatMulNBits."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses = _consumers(graph)
    new_nodes, new_inits, dropped, new_names = [], [], set(), set()
    count = 0
    for node in graph.node:
        if not (node.domain == "omnicoder" and node.op_type == "QuantLinear"):
            new_nodes.append(node)
            continue
        x, w_name, s_name, *rest = node.input
        z_name = rest[0] if rest and rest[0] else None
        codes = numpy_helper.to_array(inits[w_name])
        scales = numpy_helper.to_array(inits[s_name]).astype(np.float32)
        bits = next(a.i for a in node.attribute if a.name == "bits")
        block = codes.shape[1] // scales.shape[1]
        prefix = f"quant{count}"
        if z_name is not None:
            zeros = numpy_helper.to_array(inits[z_name]).astype(np.float32)
            nodes, tensors = _int4_matmulnbits_zp(
                node, x, codes, scales, zeros, block, node.output[0], prefix, accuracy_level
            )
        elif bits == 8 and scales.shape[1] > 1:
            nodes, tensors = _int8_matmulnbits(node, x, codes, scales, block, node.output[0], prefix, accuracy_level)
        elif bits == 4 and int4_form == "qdq" and codes.shape[0] != matmulnbits_rows:
            nodes, tensors = _int4_qdq(node, x, codes, scales, block, node.output[0], prefix)
        elif bits == 4:
            nodes, tensors = _int4_matmulnbits(node, x, codes, scales, block, node.output[0], prefix, accuracy_level)
        else:
            nodes, tensors = _int8_dynamic(node, x, codes, scales, node.output[0], prefix)
        new_nodes.extend(nodes)
        new_inits.extend(t for t in tensors if t.name not in new_names)  # block sums are shared by name
        new_names.update(t.name for t in tensors)
        for name in (w_name, s_name, *([z_name] if z_name else [])):
            uses[name] -= 1
            if uses[name] == 0:
                dropped.add(name)
        count += 1
    kept = [init for init in graph.initializer if init.name not in dropped]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    domains = {o.domain for o in model.opset_import}
    for opset in list(model.opset_import):
        if opset.domain == "omnicoder":
            model.opset_import.remove(opset)
    if any(n.domain == "com.microsoft" for n in graph.node) and "com.microsoft" not in domains:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def store_weights_fp16(model: onnx.ModelProto, min_elements: int = 1024) -> int:
    """Store large float32 initializers as float16, each followed by a Cast back to float32.

    The graph still computes in fp32 (so every CPU kernel applies); the file is about half the size,
    and onnxruntime folds the Casts when it loads the session. Returns the number of tensors converted.
    """
    graph = model.graph
    casts, converted = [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        array = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array, name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], name=name + "_to_fp32", to=TensorProto.FLOAT))
        converted += 1
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted
