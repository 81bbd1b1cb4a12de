"""Op inventories of ONNX graphs without the `onnx` package: a minimal protobuf reader over the serialized
ModelProto, and the per-node provider assignment from an onnxruntime profile. Torch-free, numpy-free.

Only the fields an inventory needs are decoded (ModelProto.graph → GraphProto.node → NodeProto.op_type,
and subgraphs in GRAPH / GRAPHS attributes); initializers are skipped by length, so a large model costs one
read of its bytes and no decoding of its weights.
"""

from __future__ import annotations

import json
import mmap
from collections import Counter
from pathlib import Path

from omnicoder.errors import OmniCoderError

# field numbers from onnx.proto
MODEL_GRAPH = 7
GRAPH_NODE = 1
NODE_OP_TYPE, NODE_ATTRIBUTE = 4, 5
ATTRIBUTE_G, ATTRIBUTE_GRAPHS = 6, 11


class _Corrupt(ValueError):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, payload span or None) for each field of one message; skip non-length payloads."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            span = None
        elif wire == 1:
            pos, span = pos + 8, None
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            span, pos = (pos, pos + length), pos + length
        elif wire == 5:
            pos, span = pos + 4, None
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        if pos > end:
            raise _Corrupt("field runs past its message")
        if span is not None:
            yield field, span


def _graph_ops(buf: memoryview, start: int, end: int, counts: Counter) -> None:
    for field, (s, e) in _fields(buf, start, end):
        if field == GRAPH_NODE:
            _node_ops(buf, s, e, counts)


def _node_ops(buf: memoryview, start: int, end: int, counts: Counter) -> None:
    op_type = ""
    for field, (s, e) in _fields(buf, start, end):
        if field == NODE_OP_TYPE:
            op_type = bytes(buf[s:e]).decode()
        elif field == NODE_ATTRIBUTE:
            for afield, (gs, ge) in _fields(buf, s, e):
                if afield in (ATTRIBUTE_G, ATTRIBUTE_GRAPHS):
                    _graph_ops(buf, gs, ge, counts)
    if not op_type:
        raise _Corrupt("a node has no op_type")
    counts[op_type] += 1


def graph_op_counts(path: str | Path) -> Counter:
    """op_type -> number of nodes in an ONNX model file (subgraphs included, domains not distinguished)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                counts: Counter = Counter()
                graphs = [span for field, span in _fields(buf, 0, len(buf)) if field == MODEL_GRAPH]
                if not graphs:
                    raise _Corrupt("no graph")
                for start, end in graphs:
                    _graph_ops(buf, start, end, counts)
                return counts
            finally:
                buf.release()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise OmniCoderError(f"cannot read the op inventory of {path}: not a valid ONNX model ({exc})") from None


def profile_inventory(path: str | Path) -> dict[str, Counter]:
    """provider -> Counter(op_type) of the distinct nodes an onnxruntime profile saw run (the nodes of
    compiled partitions appear under the partition's op name)."""
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OmniCoderError(f"cannot read the onnxruntime profile {path}: {exc}") from None
    nodes: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "op_name" in args and "provider" in args:
            nodes[event.get("name", "").removesuffix("_kernel_time")] = (args["provider"], args["op_name"])
    by_provider: dict[str, Counter] = {}
    for provider, op in nodes.values():
        by_provider.setdefault(provider, Counter())[op] += 1
    return by_provider
