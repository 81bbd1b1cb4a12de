"""The bundle's I/O contract: the names of a decode step's inputs and outputs, for every target (torch-free).

A decode step takes `input_ids` and `position_ids` [batch, sequence] and the past KV tensors
`past_key_values.{layer}.key` / `.value` (BNSH), and returns `logits`, optionally `mtp_logits` and `retention`,
the present KV tensors `present.{layer}.key` / `.value` and optionally each layer's queries `query.{layer}`.
MLA models cache key rows only (no `.value` tensors). A quantized KV cache stores each tensor as several
components whose names add a suffix (`_scale`, `_min`: see `KVQuantSpec.components`).

The ONNX, Core ML (`--kv io`, names made Core ML-safe) and ExecuTorch (`--kv io`) exporters lay out their
programs by these names, the manifest's graph.kv section records the templates, and runtimes read them.
"""

from __future__ import annotations

from omnicoder.config import OmniCoderConfig

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
LOGITS = "logits"
MTP_LOGITS = "mtp_logits"
RETENTION = "retention"
PAST = "past_key_values.{layer}.{kind}"  # kind: "key" | "value"
PRESENT = "present.{layer}.{kind}"
QUERY = "query.{layer}"
KINDS = ("key", "value")


def past_name(layer: int, kind: str, suffix: str = "") -> str:
    return PAST.format(layer=layer, kind=kind) + suffix


def present_name(layer: int, kind: str, suffix: str = "") -> str:
    return PRESENT.format(layer=layer, kind=kind) + suffix


def query_name(layer: int) -> str:
    return QUERY.format(layer=layer)


def kv_slots(config: OmniCoderConfig) -> list[tuple[int, str, int]]:
    """(layer, "key" | "value", row width) of every cached tensor, in graph order (MLA: keys only)."""
    kinds = [("key", config.kv_key_dim)] + ([("value", config.kv_value_dim)] if config.kv_value_dim > 0 else [])
    return [(i, kind, width) for i in range(config.n_layers) for kind, width in kinds]


def kv_names(config: OmniCoderConfig, spec=None) -> tuple[list[str], list[str]]:
    """Input and output names of the KV tensors, in order. `spec`: a stored-KV format with `components(width)`
    (kv_quant.KVQuantSpec; a quantized one names codes, then `_scale`, ...), None for float KV."""
    inputs, outputs = [], []
    for i, kind, width in kv_slots(config):
        for suffix in [c[0] for c in spec.components(width)] if spec is not None else [""]:
            inputs.append(past_name(i, kind, suffix))
            outputs.append(present_name(i, kind, suffix))
    return inputs, outputs


def kv_layers(config: OmniCoderConfig, spec=None) -> list[int]:
    """The layer of each KV tensor, in kv_names' order."""
    return [i for i, _, width in kv_slots(config) for _ in (spec.components(width) if spec is not None else [None])]


def windowed_kv(config: OmniCoderConfig, spec=None) -> list[bool]:
    """Per KV tensor: whether its layer attends a sliding window, so a runtime may feed it its newest rows only."""
    return [config.layer_window(i) > 0 for i in kv_layers(config, spec)]


def query_names(config: OmniCoderConfig) -> list[str]:
    return [query_name(i) for i in range(config.n_layers)]


def head_names(config: OmniCoderConfig) -> list[str]:
    """The outputs before the KV: logits, then mtp_logits and retention when the model has those heads."""
    return [LOGITS] + [MTP_LOGITS] * bool(config.n_mtp) + [RETENTION] * bool(config.retention_head)


def output_names(config: OmniCoderConfig, spec=None, queries: bool = True) -> list[str]:
    """Every output of a decode step, in order."""
    return head_names(config) + kv_names(config, spec)[1] + (query_names(config) if queries else [])


def kv_templates(config: OmniCoderConfig) -> dict[str, str | None]:
    """The per-layer name templates the manifest's graph.kv section records (None: MLA has no value tensors)."""
    has_values = config.kv_value_dim > 0
    return {
        "past_key": PAST.replace("{kind}", "key"),
        "past_value": PAST.replace("{kind}", "value") if has_values else None,
        "present_key": PRESENT.replace("{kind}", "key"),
        "present_value": PRESENT.replace("{kind}", "value") if has_values else None,
        "query": QUERY,
    }
