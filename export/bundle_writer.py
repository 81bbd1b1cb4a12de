"""What every exporter writes into a bundle: the manifest's model section, the KV contract, the paging
sidecar, the tokenizer and the export record. Target-specific parts (graph file, precision) stay with
each exporter; `runtimes.bundle.finalize_bundle` hashes and validates the result."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omnicoder.export.bundle_tokenizer import TOKENIZER_FILE as TOKENIZER_FILE  # re-exported
from omnicoder.export.bundle_tokenizer import Sidecars, tokenizer_section, write_tokenizer_files
from omnicoder.runtimes.stats import peak_rss_mb

from omnicoder import __version__
from omnicoder.config import OmniCoderConfig
from omnicoder.io_contract import kv_templates
from omnicoder.kv_quant import KVQuantSpec

DEFAULT_PAGE_LEN = 64
PAGING_SIDECAR = "model.kv_paging.json"
RETENTION_SIDECAR = "model.retention.json"
# defaults of the retention sidecar (measured in docs/benchmarks.md: benchmarks/retention_quality.py)
RETENTION_DEFAULTS = {
    "sink_tokens": 4,
    "recent_fraction": 0.75,
    "budget_fraction": 0.25,
    "compress": "nf4",
    "group": 16,
}


def _scalar_fields(section: dict) -> dict:
    """The section without list values (longrope factors stay in config.json; the graph applies them)."""
    return {key: value for key, value in section.items() if not isinstance(value, list)}


def model_metadata(config: OmniCoderConfig, parameters: int) -> dict:
    """The manifest's `model` section."""
    return {
        "name": config.name,
        "attention": config.attention,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_kv_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "kv_latent_dim": config.kv_latent_dim,
        "rope_head_dim": config.rope_head_dim,
        "d_model": config.d_model,
        "vocab_size": config.vocab_size,
        "context_length": config.max_seq_len,
        "parameters": parameters,
        "rope": {"theta": config.rope_theta, "scaling": _scalar_fields(config.to_dict()["rope_scaling"])},
        "bos_id": config.bos_id,
        "eos_id": config.eos_id,
        "pad_id": config.pad_id,
        "n_mtp": config.n_mtp,
        "retention_head": config.retention_head,
        "sliding_window": config.sliding_window,
    }


def kv_contract(config: OmniCoderConfig, spec: KVQuantSpec | None = None) -> dict:
    """The manifest's `graph.kv`: names, widths and the stored format of the KV tensors."""
    spec = spec or KVQuantSpec()
    has_values = config.kv_value_dim > 0
    storage = {
        "dtype": spec.dtype,
        "rotation": spec.rotation,
        "key_group": spec.group_for(config.kv_key_dim) if spec.quantized else None,
        "value_group": spec.group_for(config.kv_value_dim) if spec.quantized and has_values else None,
        "key_components": [
            {"suffix": suffix, "dtype": dtype, "width": width}
            for suffix, dtype, width in spec.components(config.kv_key_dim)
        ],
        "value_components": [
            {"suffix": suffix, "dtype": dtype, "width": width}
            for suffix, dtype, width in spec.components(config.kv_value_dim)
        ]
        if has_values
        else [],
    }
    return {
        "layout": "BNSH",
        "kind": "gqa" if config.attention == "gqa" else "mla-latent",
        "heads": config.kv_heads,
        "key_dim": config.kv_key_dim,
        "value_dim": config.kv_value_dim,
        **kv_templates(config),  # past_key, past_value, present_key, present_value, query
        "storage": storage,
    }


def kv_bytes_per_token_per_layer(config: OmniCoderConfig, spec: KVQuantSpec | None = None) -> int:
    """Exact stored KV bytes of one token in one layer (all KV heads, keys + values + scales)."""
    spec = spec or KVQuantSpec()
    widths = [config.kv_key_dim] + ([config.kv_value_dim] if config.kv_value_dim > 0 else [])
    return config.kv_heads * sum(spec.bytes_per_row(w) for w in widths)


def paging_sidecar(config: OmniCoderConfig, page_len: int, spec: KVQuantSpec | None = None) -> dict:
    spec = spec or KVQuantSpec()
    return {
        "page_len": page_len,
        "n_layers": config.n_layers,
        "heads": config.kv_heads,
        "dl": config.kv_latent_dim if config.attention == "mla" else config.head_dim,
        "rope_dim": config.rope_head_dim if config.attention == "mla" else 0,
        "key_dim": config.kv_key_dim,
        "value_dim": config.kv_value_dim,
        "kv_dtype": spec.dtype,
        "kv_group": spec.group_for(config.kv_key_dim) if spec.quantized else 0,
        "kv_rotation": spec.rotation,
        "bytes_per_token_per_layer": kv_bytes_per_token_per_layer(config, spec),
        "context_length": config.max_seq_len,
    }


def write_common_files(
    directory: Path,
    tokenizer_json: str,
    config: OmniCoderConfig,
    page_len: int,
    spec: KVQuantSpec | None = None,
    training: dict | None = None,
) -> dict:
    """Write tokenizer.json (+ chat_template.jinja) and the paging sidecar; return the manifest's `sidecars`
    section (which carries the `tokenizer` section on to `common_manifest`)."""
    sidecars = Sidecars(kv_paging=PAGING_SIDECAR)
    sidecars.tokenizer = write_tokenizer_files(directory, tokenizer_json, config)
    (directory / PAGING_SIDECAR).write_text(json.dumps(paging_sidecar(config, page_len, spec), indent=2))
    if config.retention_head:
        (directory / RETENTION_SIDECAR).write_text(json.dumps(retention_sidecar(config, training), indent=2))
        sidecars["retention"] = RETENTION_SIDECAR
    return sidecars


def retention_sidecar(config: OmniCoderConfig, training: dict | None = None) -> dict:
    """How a runtime applies the retention head (runtimes/kv_retention.py), with a default budget."""
    d = RETENTION_DEFAULTS
    fp32_token = kv_bytes_per_token_per_layer(config) * config.n_layers
    nf4_token = kv_bytes_per_token_per_layer(config, KVQuantSpec("nf4", d["group"])) * config.n_layers
    sidecar = {
        "output": "retention",
        "classes": ["keep", "compress", "drop"],
        "score": "logit(keep) - logit(drop)",
        "class_rule": "argmax",
        "sink_tokens": d["sink_tokens"],
        "recent_window": int(d["recent_fraction"] * d["budget_fraction"] * config.max_seq_len),
        "recent_fraction": d["recent_fraction"],
        "compress": {"dtype": d["compress"], "group": d["group"], "bytes_per_token": nf4_token},
        "budget_fraction": d["budget_fraction"],
        "budget_bytes": int(d["budget_fraction"] * config.max_seq_len * fp32_token),
    }
    if training:
        sidecar["training"] = training
    return sidecar


def common_manifest(
    target: str,
    config: OmniCoderConfig,
    parameters: int,
    precision: dict,
    graph: dict,
    sidecars: dict,
    command: str,
    started: float,
) -> dict:
    """A manifest (before `finalize_bundle` adds format and file hashes) for any target."""
    return {
        "created_by": f"omnicoder {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target,
        "model": model_metadata(config, parameters),
        "precision": precision,
        "graph": graph,
        "tokenizer": getattr(sidecars, "tokenizer", None) or tokenizer_section("", config),
        "sidecars": dict(sidecars),
        "export": {
            "command": command,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
    }
