"""`omnicoder-export --target coreml`: model -> Core ML MLProgram (.mlpackage) -> bundle directory.

    omnicoder-export --target coreml --weights fp16|int4 --kv state|io [--deployment-target iOS17|iOS18]
                     [--max-seq-len N] --out DIR

- `--kv state` (default, iOS18+): one function `main`, KV cache as the Core ML states `keyCache` / `valueCache`,
  inputs `inputIds` + `causalMask`, output `logits` (swift-transformers' stateful LanguageModel contract).
- `--kv io` (KV in / KV out, formerly `stream`, still accepted; iOS17+): KV as explicit inputs/outputs (the I/O
  contract of omnicoder.io_contract, Core ML-safe names; the manifest's kv_mode keeps the name "stream"), in a
  multifunction package: `prefill` (no past) and `decode` (the default function), sharing their weights.
- Attention: the iOS18 MIL `scaled_dot_product_attention`, one per layer (iOS17 decomposes it); MLA through the
  `omnicoder_coreml::mla` custom op (see coreml_ops.py).
- Weights: fp16; or int4 = per-block (32) codes as `constexpr_blockwise_shift_scale` (coreml_quant.py): every
  nn.Linear of the blocks and MTP heads (a `gguf:` file's own Q4_0/Q4_1 blocks, kept), and for a subword vocabulary
  the LM head and embedding too (a tied pair shares one constexpr; a GGUF's Q8_0 embedding stays 8-bit). Retention
  head, RoPE tables and MLA's k_up/v_up (einsum weights, not nn.Linear) stay fp16. See docs/coreml.md.
- KV state: sized by `--max-seq-len` (the context the app chooses; default the model's); the manifest records its
  bytes (graph.coreml.state_bytes) so an app knows the memory it commits to before loading.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omnicoder.export.bundle_writer import (
    DEFAULT_PAGE_LEN,
    common_manifest,
    kv_contract,
    write_common_files,
)
from omnicoder.runtimes.bundle import FORMAT_VERSION, finalize_bundle
from tqdm import tqdm

from omnicoder import __version__
from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory
from omnicoder.kv_quant import KVQuantSpec

WEIGHT_MODES = ("fp16", "int4")
KV_MODES = ("state", "io")
KV_ALIASES = {"stream": "io"}  # the earlier name of --kv io
# graph.coreml.kv_mode and the package metadata, as apps and runtimes/coreml_check.py read them (format unchanged)
BUNDLE_KV_MODE = {"state": "state", "io": "stream"}
DEPLOYMENT_TARGETS = ("iOS17", "iOS18")
MIN_CAPACITY = 8


@dataclass
class CoreMLExportOptions:
    weights: str = "fp16"
    kv: str = "state"
    deployment_target: str = "iOS18"
    max_seq_len: int = 0  # KV capacity in tokens; 0 = the model's context
    page_len: int = DEFAULT_PAGE_LEN
    native_mla: bool = True  # False: decompose omnicoder_coreml::mla with its composite form (the fallback)
    quantize_head: bool | None = None  # int4: LM head + embedding too; None = only for a vocabulary > 1024
    transcode: bool = True  # int4 of a gguf: model keeps the file's Q4_0 / Q4_1 / Q8_0 blocks

    def validate(self, config: OmniCoderConfig) -> int:
        """Raise OmniCoderError for an impossible combination; return the KV capacity."""
        if self.weights not in WEIGHT_MODES:
            raise OmniCoderError(
                f"--weights {self.weights} is unknown for coreml; use one of {', '.join(WEIGHT_MODES)}"
            )
        self.kv = KV_ALIASES.get(self.kv, self.kv)
        if self.kv not in KV_MODES:
            raise OmniCoderError(f"--kv {self.kv} is unknown for coreml; use {' or '.join(KV_MODES)}")
        if self.deployment_target not in DEPLOYMENT_TARGETS:
            raise OmniCoderError(
                f"--deployment-target {self.deployment_target} is unknown; use one of {', '.join(DEPLOYMENT_TARGETS)}"
            )
        if self.deployment_target == "iOS17" and self.kv == "state":
            raise OmniCoderError("--kv state needs Core ML states (iOS18+); use --deployment-target iOS18 or --kv io")
        if self.deployment_target == "iOS17" and self.weights == "int4":
            raise OmniCoderError(
                "--weights int4 (per-block constexpr_blockwise_shift_scale) needs iOS18+; "
                "use --deployment-target iOS18 or --weights fp16"
            )
        if self.page_len <= 0:
            raise OmniCoderError(f"--page-len must be > 0, got {self.page_len}")
        capacity = self.max_seq_len or config.max_seq_len
        if capacity < MIN_CAPACITY:
            raise OmniCoderError(f"--max-seq-len {capacity} is too small for a Core ML export; use >= {MIN_CAPACITY}")
        return capacity


def user_metadata(config: OmniCoderConfig, options: CoreMLExportOptions, capacity: int) -> dict[str, str]:
    """The .mlpackage's user_defined_metadata (strings, as Core ML stores them)."""
    return {
        "omnicoder.bundle_format_version": str(FORMAT_VERSION),
        "omnicoder.attention": config.attention,
        "omnicoder.kv_mode": BUNDLE_KV_MODE[options.kv],
        "omnicoder.weights": options.weights,
        "rope_theta": str(config.rope_theta),
        "rope_scaling": json.dumps(config.to_dict()["rope_scaling"]),
        "rope_head_dim": str(config.rope_head_dim),
        "n_layers": str(config.n_layers),
        "n_heads": str(config.n_heads),
        "n_kv_heads": str(config.kv_heads),
        "head_dim": str(config.head_dim),
        "kv_latent_dim": str(config.kv_latent_dim),
        "vocab_size": str(config.vocab_size),
        "context_length": str(config.max_seq_len),
        "max_seq_len": str(capacity),
        "omnicoder.state_bytes": str(state_bytes(config, capacity)) if options.kv == "state" else "0",
        "bos_id": str(config.bos_id),
        "eos_id": str(config.eos_id),
    }


def _kv_section(config: OmniCoderConfig, kv_mode: str) -> dict:
    from omnicoder.export.coreml_graph import coreml_name

    contract = kv_contract(config)
    if kv_mode == "io":
        return {k: coreml_name(v) if isinstance(v, str) and "{layer}" in v else v for k, v in contract.items()}
    has_values = config.kv_value_dim > 0
    return {
        **contract,
        "storage": "state: keyCache / valueCache [layers, 1, heads, capacity, width], slot = position",
        "past_key": "keyCache[{layer}]",
        "present_key": "keyCache[{layer}]",
        "past_value": "valueCache[{layer}]" if has_values else None,
        "present_value": "valueCache[{layer}]" if has_values else None,
        "query": None,
    }


def _constraints(options: CoreMLExportOptions, capacity: int) -> list[str]:
    notes = ["batch is 1", f"at most {capacity} tokens in the cache (--max-seq-len)"]
    if options.kv == "state":
        notes += [
            "causalMask [1, 1, T, end]: the T tokens take cache slots and positions end - T .. end - 1; "
            "the causal rule is applied in-graph, the mask's values are added to it (zeros are valid)",
            "make a fresh state (MLModel.makeState) per sequence; slot = absolute position, so no eviction",
        ]
    else:
        notes += [
            "call prefill first (no past), then decode with the present outputs fed back as past inputs",
            "past_sequence + sequence <= max_seq_len; positions are absolute, so a runtime may drop cache entries",
        ]
    if options.deployment_target == "iOS17":
        notes.append("iOS17: attention is decomposed (matmul + softmax); SDPA needs iOS18")
    return notes


def export_coreml_bundle(
    model, tokenizer_json: str, out: str | Path, options: CoreMLExportOptions, command: str = ""
) -> dict:
    """Export `model` (an OmniCoder in fp32) into a Core ML bundle at `out`; returns the manifest.

    int4 swaps the model's linear layers for QuantLinear in place: pass a copy to keep the float model.
    """
    from omnicoder.export import coreml_graph
    from omnicoder.export.coreml_graph import PACKAGE

    config: OmniCoderConfig = model.config
    capacity = options.validate(config)
    if importlib.util.find_spec("coremltools") is None:
        raise OmniCoderError("--target coreml needs coremltools; install it with pip install 'omnicoder[coreml]'")
    started = time.perf_counter()
    parameters = model.num_parameters()
    stages = tqdm(total=4, desc="export coreml", unit="stage")
    quant = None
    if options.weights == "int4":
        from omnicoder.export.coreml_quant import quantize_for_coreml

        stages.set_postfix_str("quantize int4")
        quant = quantize_for_coreml(model, options.quantize_head, options.transcode)
    stages.update(1)
    stages.set_postfix_str(f"torch.export + ct.convert ({options.kv})")
    if options.kv == "state":
        programs = [coreml_graph.convert_stateful(model, capacity, options.native_mla)]
    else:
        programs = coreml_graph.convert_kv_io(model, capacity, options.deployment_target, options.native_mla)
    stages.update(1)
    with atomic_directory(out) as tmp:
        stages.set_postfix_str("save .mlpackage")
        info = _package_info(config, options, capacity)
        multifunction = options.deployment_target != "iOS17"  # multifunction packages need iOS18+
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".coreml-parts-") as parts:
            packages = coreml_graph.save_package(programs, tmp, Path(parts), info, multifunction)
        sidecars = write_common_files(tmp, tokenizer_json, config, options.page_len, KVQuantSpec(dtype="fp16"))
        stages.update(1)
        default = programs[-1]
        precision = {
            "weights": options.weights,
            "block_size": 32 if options.weights == "int4" else None,
            "kv": "fp16",
            "compute": "fp16",
            "embedding": quant.embedding if quant else "fp16",
            "lm_head": quant.lm_head if quant else "fp16" + (" (tied to the embedding)" * config.tie_embeddings),
            "quantized_layers": quant.layers if quant else 0,
        }
        if quant and quant.file_blocks:
            precision["file_blocks_kept"] = quant.file_blocks
        graph = {
            "file": PACKAGE,
            "attention_op": _attention_op(config, options),
            "inputs": default.inputs,
            "outputs": default.outputs,
            "kv": _kv_section(config, options.kv),
            "constraints": _constraints(options, capacity),
            "coreml": {
                "kv_mode": BUNDLE_KV_MODE[options.kv],
                "deployment_target": options.deployment_target,
                "max_seq_len": capacity,
                "softcapped_layers": config.n_layers if config.attn_logit_softcap > 0 else 0,  # attend without SDPA
                "functions": [p.name for p in programs],
                "default_function": default.name,
                "packages": packages,
                "inputs": {p.name: p.inputs for p in programs},
                "outputs": {p.name: p.outputs for p in programs},
                "states": default.states,
                "state_bytes": _state_bytes_section(default.states, config),
                "mla_attention": _mla_note(config, options),
                "metadata": user_metadata(config, options, capacity),
            },
        }
        manifest = common_manifest("coreml", config, parameters, precision, graph, sidecars, command, started)
        manifest = finalize_bundle(tmp, manifest)
        stages.update(1)
    stages.close()
    return manifest


def _attention_op(config: OmniCoderConfig, options: CoreMLExportOptions) -> str:
    """MIL's scaled_dot_product_attention per layer on iOS18, unless the scores are soft-capped (written out as
    matmul, tanh, softmax: the MIL op has no cap); iOS17 decomposes it."""
    if config.attn_logit_softcap > 0:
        return "decomposed (soft-capped scores)"
    return "scaled_dot_product_attention" if options.deployment_target == "iOS18" else "decomposed"


def state_bytes(config: OmniCoderConfig, capacity: int) -> int:
    """Bytes of the fp16 keyCache + valueCache states for `capacity` tokens (MLA: a 1-element valueCache)."""
    values = config.kv_value_dim * capacity * config.kv_heads * config.n_layers if config.kv_value_dim else 1
    return 2 * (config.n_layers * config.kv_heads * capacity * config.kv_key_dim + values)


def _state_bytes_section(states: list[dict], config: OmniCoderConfig) -> dict | None:
    """What the app commits to: bytes per state, in total, and per token of context (fp16)."""
    if not states:
        return None
    sizes = {s["name"]: 2 * _product(s["shape"]) for s in states}
    per_token = 2 * config.n_layers * config.kv_heads * (config.kv_key_dim + config.kv_value_dim)
    return {**sizes, "total": sum(sizes.values()), "per_token": per_token}


def _product(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _mla_note(config: OmniCoderConfig, options: CoreMLExportOptions) -> str | None:
    if config.attention != "mla":
        return None
    if options.native_mla:
        return "omnicoder_coreml::mla lowered natively to scaled_dot_product_attention (V = K[..., :kv_latent_dim])"
    return "omnicoder_coreml::mla decomposed with its composite form (reshape + scaled_dot_product_attention)"


def _package_info(config: OmniCoderConfig, options: CoreMLExportOptions, capacity: int) -> dict:
    return {
        "metadata": user_metadata(config, options, capacity),
        "short_description": (
            f"OmniCoder {config.name}: decode step, KV {BUNDLE_KV_MODE[options.kv]}, {options.weights} weights"
        ),
        "version": __version__,
    }


def export_from_cli(model, tokenizer, args, command: str) -> dict:
    """`omnicoder-export --target coreml` (see export/cli.py)."""
    options = CoreMLExportOptions(
        weights=args.weights,
        kv=args.kv,
        deployment_target=args.deployment_target,
        max_seq_len=args.max_seq_len,
        page_len=args.page_len,
        transcode=not getattr(args, "no_transcode", False),
    )
    return export_coreml_bundle(model, tokenizer.to_json(), args.out, options, command=command)
