"""A tied embedding that reads the LM head's quantized codes: `com.microsoft.GatherBlockQuantized`.

A tied model's embedding is the same [vocab, d_model] matrix as its LM head. When the head is quantized in
blocks along d_model (MatMulNBits: 8-bit codes with zero point 128, or packed 4-bit codes with zero point 8),
onnxruntime's GatherBlockQuantized can look token rows up in those very codes and scales: the float embedding
(for a 49k x 576 vocabulary, 113 MB of fp32) leaves the bundle, and the codes are stored once. Asymmetric heads
(zero-point inputs) keep the float embedding: GatherBlockQuantized takes packed integer zero points of its own
layout only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)


def share_head_codes(model: onnx.ModelProto, vocab: int, d_model: int) -> str | None:
    """Replace the Gather of a float [vocab, d_model] embedding by GatherBlockQuantized over the head's codes.
    Returns the embedding's new precision in words, or None when nothing was rewritten."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    head = next(
        (
            n
            for n in graph.node
            if n.op_type == "MatMulNBits" and _attr(n, "N") == vocab and _attr(n, "K") == d_model and len(n.input) == 3
        ),
        None,
    )
    gather = next(
        (
            n
            for n in graph.node
            if n.op_type == "Gather"
            and n.input[0] in inits
            and tuple(inits[n.input[0]].dims) == (vocab, d_model)
            and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT
        ),
        None,
    )
    if head is None or gather is None or (_attr(gather, "axis") or 0) != 0:
        return None
    bits, block = _attr(head, "bits"), _attr(head, "block_size")
    columns = d_model if bits == 8 else d_model // 2
    shapes = {
        "embed_codes_shape": np.array([vocab, columns], np.int64),
        "embed_scales_shape": np.array([vocab, d_model // block], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in shapes.items())
    nodes = [
        helper.make_node("Reshape", [head.input[1], "embed_codes_shape"], ["embed_codes"], name="embed_codes"),
        helper.make_node("Reshape", [head.input[2], "embed_scales_shape"], ["embed_scales"], name="embed_scales"),
        helper.make_node(
            "GatherBlockQuantized",
            ["embed_codes", gather.input[1], "embed_scales"],
            list(gather.output),
            name="embed_gather_block_quantized",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=block,
            bits=bits,
        ),
    ]
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    if not any(gather.input[0] in n.input for n in graph.node):
        graph.initializer.remove(inits[gather.input[0]])
    return f"int{bits} blocks of {block}, the LM head's codes (GatherBlockQuantized)"
