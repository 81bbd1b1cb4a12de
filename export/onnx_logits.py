"""An optional `logits_to_keep` input: the LM head runs only on the last N positions of a call.

A prompt's prefill needs the next-token logits of its last position only; computing the head for every position
costs a [T, d_model] x [d_model, vocab] product (23% of a 128-token SmolLM2-135M prefill) and a [T, vocab] output
(25 MB at T = 128). The exporter inserts `Slice(hidden, -N)` before the head, with N an int64 [1] graph input
that has an initializer of 0 (= every position) as its default: runners that do not feed it (older runners, the
sample apps, scoring) get every position's logits as before; the ONNX runner feeds 1 when it needs only the last.
The MTP and retention heads read the hidden states before the slice. Like Hugging Face's `logits_to_keep`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

LOGITS_TO_KEEP = "logits_to_keep"
HEAD_OPS = ("MatMul", "MatMulNBits", "Gemm")
PASS_THROUGH = ("Mul", "Div", "Tanh", "Cast", "Softcap")  # elementwise ops between head and logits (softcapping)


def _head_node(graph: onnx.GraphProto, output: str) -> onnx.NodeProto | None:
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type in HEAD_OPS else None


def add_logits_to_keep(model: onnx.ModelProto, output: str = "logits") -> bool:
    """Slice the head's input to its last `logits_to_keep` positions (0: all). False when no head was found."""
    graph = model.graph
    head = _head_node(graph, output)
    if head is None:
        return False
    hidden = head.input[0]
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, onnx.TensorProto.INT64, [1]))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(1, np.int64), LOGITS_TO_KEEP),  # the default: every position
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "logits_slice_end"),
            numpy_helper.from_array(np.ones(1, np.int64), "logits_slice_axis"),
        ]
    )
    nodes = [
        helper.make_node("Neg", [LOGITS_TO_KEEP], ["logits_slice_start"], name="logits_keep_neg"),
        helper.make_node(
            "Slice",
            [hidden, "logits_slice_start", "logits_slice_end", "logits_slice_axis"],
            ["logits_hidden"],
            name="logits_keep_slice",
        ),
    ]
    head.input[0] = "logits_hidden"
    position = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    return True
