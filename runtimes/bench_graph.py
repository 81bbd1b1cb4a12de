"""Op inventories of ONNX graphs: the node counts of a model file (read with `onnx`, weights left on disk), and
the per-node provider assignment from an onnxruntime profile. Torch-free.

`onnx` (a dependency of the base install, for this bench) is imported only when a graph is read, so the
runners never load it; a trimmed install without it gets a one-line error (`pip install onnx`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from omnicoder.errors import OmniCoderError


def graph_op_counts(path: str | Path) -> Counter:
    """op_type -> number of nodes in an ONNX model file (subgraphs included, domains not distinguished)."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise OmniCoderError("reading an ONNX graph's op inventory needs the onnx package: pip install onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
        if not model.HasField("graph"):
            raise ValueError("no graph")
    except (OSError, ValueError, DecodeError) as exc:
        raise OmniCoderError(f"cannot read the op inventory of {path}: not a valid ONNX model ({exc})") from None
    counts: Counter = Counter()
    graphs = [model.graph]
    while graphs:
        for node in graphs.pop().node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    return counts


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
