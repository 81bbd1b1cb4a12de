"""`omnicoder-export --target onnx`: model -> ONNX decode-step graph -> bundle directory.

Weights: fp32; fp16 (float16 storage, fp32 compute); int4 (weight-only, block 32, symmetric or with zero
points; every nn.Linear of the blocks and MTP heads); int8 (per-channel weights, dynamic int8 activations).
A `gguf:` model keeps its file's Q4_0 / Q4_1 / Q8_0 blocks (`omnicoder.gguf_blocks`). Large vocabularies
quantize the LM head too, and a tied embedding then reads the head's codes (`onnx_embedding`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from omnicoder.export.bundle_writer import (
    DEFAULT_PAGE_LEN,
    common_manifest,
    kv_contract,
    write_common_files,
)
from omnicoder.export.genai_config import write_genai_config
from omnicoder.export.onnx_embedding import share_head_codes
from omnicoder.export.onnx_fusions import apply_fusions, merge_sibling_quant_linears, shared_buffer_attention
from omnicoder.export.onnx_graph import export_decode_graph
from omnicoder.export.onnx_logits import LOGITS_TO_KEEP, add_logits_to_keep
from omnicoder.export.onnx_moe import moe_contract, resolve_lowering
from omnicoder.export.onnx_quant import lower_quant_linears, store_weights_fp16
from omnicoder.runtimes.bundle import FORMAT_VERSION, finalize_bundle
from tqdm import tqdm

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory
from omnicoder.io_contract import INPUT_IDS, POSITION_IDS, kv_names, query_names, windowed_kv
from omnicoder.kv_quant import DEFAULT_ROTATION, KVQuantSpec

WEIGHT_MODES = ("fp32", "fp16", "int4", "int8")
# Above this vocabulary the LM head is most of the bytes read per token (a 32k x 768 head is 98 MB in fp32), so
# int4/int8 quantize it too (a tied embedding then gathers rows of its codes). Byte vocabularies keep it fp32.
QUANTIZED_HEAD_MIN_VOCAB = 1024
KV_IO = ("present", "shared")
# Weights above this go to model.onnx.data: onnxruntime then maps them from the file instead of parsing a copy
# inside the protobuf (SmolLM2-135M int4: 26 MiB less resident memory, docs/benchmarks.md); small graphs stay
# one file. Protobuf files cannot pass 2 GB either.
EXTERNAL_DATA_THRESHOLD = 32 * 1024 * 1024


@dataclass
class OnnxExportOptions:
    weights: str = "int4"
    int4_format: str = "qdq"
    int4_scheme: str = "sym"  # sym: signed codes; asym: zero points (MatMulNBits), see omnicoder.quant
    transcode: bool = True  # a gguf: model keeps its file's Q4_0 / Q4_1 / Q8_0 blocks (omnicoder.gguf_blocks)
    attention: str = "onnx"
    opset: int = 23
    accuracy_level: int = 4
    page_len: int = DEFAULT_PAGE_LEN
    kv: str = "fp32"  # stored KV dtype: fp32 | fp16 | u8 | nf4 (omnicoder.kv_quant)
    kv_group: int = 32
    kv_rotation: str = "none"
    fuse: bool = True  # export/onnx_fusions.py: merged sibling linears, skip+RMSNorm, BSH attention
    query_outputs: bool = False  # query.{i} outputs for predicted KV pages / H2O retention
    kv_io: str = "present"  # present: past + new rows out; shared: in-place buffers (onnx_fusions.py)
    moe_lowering: str = "auto"  # MoE layers: ort (com.microsoft.MoE / QMoE) | gather | dense (onnx_moe.py)

    def kv_spec(self) -> KVQuantSpec:
        return KVQuantSpec(self.kv, self.kv_group, self.kv_rotation).validate()


def graph_constraints(options: OnnxExportOptions) -> list[str]:
    """Limits of the graph a runtime must respect, in words."""
    if options.kv_io == "shared":
        return [
            "KV buffers are shared: bind one [batch, kv_heads, capacity, width] buffer per KV tensor as both past and "
            "present; slot = absolute position, the rows in use are those before position_ids[:, 0], and the graph "
            "writes the new rows in place (no paging, windowing or retention on this graph)",
            "GroupQueryAttention: batch must be 1 when sequence > 1 and past_sequence > 0",
        ]
    notes = ["positions are absolute; the KV cache may drop tokens as long as their neighbours keep their positions"]
    if options.attention == "ort-gqa":
        notes.append("GroupQueryAttention: batch must be 1 when sequence > 1 and past_sequence > 0")
    return notes


_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
}


def _name_dims(model: onnx.ModelProto, config: OmniCoderConfig, spec: KVQuantSpec) -> None:
    """Give the graph's dynamic I/O dimensions stable names (the exporter numbers them)."""
    past_in, present_out = kv_names(config, spec)
    queries = set(query_names(config))

    def rename(value, names):
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if name is not None:
                dim.ClearField("dim_value")
                dim.dim_param = name

    windowed = dict(zip(past_in + present_out, windowed_kv(config, spec) * 2, strict=True))
    for value in model.graph.input:
        if value.name in (INPUT_IDS, POSITION_IDS):
            rename(value, ["batch", "sequence"])
        elif value.name in windowed:
            rename(value, ["batch", None, "past_window_sequence" if windowed[value.name] else "past_sequence", None])
    for value in model.graph.output:
        if value.name in windowed:
            rename(value, ["batch", None, "total_window_sequence" if windowed[value.name] else "total_sequence", None])
        elif value.name in queries:
            rename(value, ["batch", None, "sequence", None])
        else:
            rename(value, ["batch", "sequence"])


def _tensor_specs(values) -> list[dict]:
    specs = []
    for value in values:
        tt = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        specs.append({"name": value.name, "dtype": _DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape})
    return specs


def _metadata_props(config: OmniCoderConfig, options: OnnxExportOptions) -> dict[str, str]:
    return {
        "omnicoder.bundle_format_version": str(FORMAT_VERSION),
        "omnicoder.attention": config.attention,
        "rope_theta": str(config.rope_theta),
        "rope_scaling": json.dumps(config.to_dict()["rope_scaling"]),
        "n_layers": str(config.n_layers),
        "n_heads": str(config.n_heads),
        "n_kv_heads": str(config.kv_heads),
        "head_dim": str(config.head_dim),
        "kv_latent_dim": str(config.kv_latent_dim),
        "rope_head_dim": str(config.rope_head_dim),
        "vocab_size": str(config.vocab_size),
        "context_length": str(config.max_seq_len),
        "bos_id": str(config.bos_id),
        "eos_id": str(config.eos_id),
        "weights": options.weights,
        "kv_dtype": options.kv,
        "omnicoder.kv_io": options.kv_io,  # checked against the manifest's graph.kv.io by runtimes/graph_checks.py
    }


def export_onnx_bundle(
    model, tokenizer_json: str, out: str | Path, options: OnnxExportOptions, command: str = ""
) -> dict:
    """Export `model` (an OmniCoder in fp32) into a bundle at `out`; returns the manifest.

    int4/int8 swap the model's linear layers for QuantLinear in place: pass a copy to keep the float model.
    """
    import torch

    from omnicoder.quant import quantize_experts, quantize_linears

    if options.weights not in WEIGHT_MODES:
        raise OmniCoderError(f"--weights {options.weights} is unknown; use one of {', '.join(WEIGHT_MODES)}")
    if options.kv_io not in KV_IO:
        raise OmniCoderError(f"--kv-io {options.kv_io} is unknown; use one of {', '.join(KV_IO)}")
    if options.kv_io == "shared" and (
        model.config.attention != "gqa" or options.kv != "fp32" or options.attention != "onnx" or not options.fuse
    ):
        raise OmniCoderError(
            "--kv-io shared needs a GQA model with --kv fp32, --attention onnx and the fusions on; "
            "use --kv-io present for this combination"
        )
    config: OmniCoderConfig = model.config
    if options.kv_io == "shared" and (feature := _per_layer_feature(config)):
        raise OmniCoderError(
            f"--kv-io shared cannot carry {feature} (one fused attention form for every layer); use --kv-io present"
        )
    spec = options.kv_spec()
    moe_lowering = resolve_lowering(model, options.moe_lowering)
    started = time.perf_counter()
    parameters = model.num_parameters()
    stages = tqdm(total=5, desc="export onnx", unit="stage")
    quantized = quantized_banks = 0
    kept: dict = {}
    quantized_head = options.weights in ("int4", "int8") and config.vocab_size > QUANTIZED_HEAD_MIN_VOCAB
    if quantized_head:
        head_precision = f"{options.weights} (a quantized copy of the embedding)"
    else:
        head_precision = "fp32 (tied to the embedding)" if config.tie_embeddings else "fp32"
    if options.weights in ("int4", "int8"):
        stages.set_postfix_str(f"quantize {options.weights}")
        skip = ("retention_head",) if quantized_head else ("lm_head", "retention_head")
        kept = _file_blocks(model, options) if options.transcode else {}
        asym = options.int4_scheme == "asym"
        replaced = quantize_linears(model, options.weights, skip=skip, asymmetric=asym, prequantized=kept)
        quantized, kept = len(replaced), {name: kept[name] for name in replaced if name in kept}
        if options.weights == "int4" and moe_lowering:
            quantized_banks = len(quantize_experts(model, "int4"))
        if kept:
            head_precision = head_precision.replace(options.weights, "the file's own blocks", 1)
    stages.update(1)
    with atomic_directory(out) as tmp, torch.no_grad():
        stages.set_postfix_str("torch.export + ONNX conversion")
        graph_path = export_decode_graph(
            model,
            tmp / "model.onnx",
            options.opset,
            options.attention,
            spec,
            options.query_outputs,
            moe_lowering,
            options.accuracy_level,
        )
        stages.update(1)
        stages.set_postfix_str("lower quantized linears")
        proto = onnx.load(str(graph_path))
        placeholders = sum(n.domain == "omnicoder" and n.op_type == "QuantLinear" for n in proto.graph.node)
        merged = merge_sibling_quant_linears(proto) if options.fuse else 0
        share = quantized_head and config.tie_embeddings
        head_rows = config.vocab_size if share else 0
        lowered = lower_quant_linears(proto, options.int4_format, options.accuracy_level, head_rows)
        embedding = (share_head_codes(proto, config.vocab_size, config.d_model) if share else None) or "fp32"
        if lowered + merged != placeholders or placeholders < quantized:  # a layer may be called more than once
            raise OmniCoderError(
                f"internal: {quantized} layers quantized, {placeholders} calls, but {lowered} + {merged} merged lowered"
            )
        fusions = {"merged_linears": merged, **apply_fusions(proto)} if options.fuse else {}
        if options.kv_io == "shared":
            fusions["shared_buffer_attention"] = shared_buffer_attention(
                proto, config.sliding_window, _rotary_tables(model)
            )
            if fusions["shared_buffer_attention"] != config.n_layers:
                raise OmniCoderError("--kv-io shared could not rewrite every attention layer; use --kv-io present")
        if options.weights == "fp16":
            store_weights_fp16(proto)
        keeps_logits = add_logits_to_keep(proto)
        _name_dims(proto, config, spec)
        moe = moe_contract(proto, config, moe_lowering, quantized_banks > 0) if moe_lowering else None
        for key, value in _metadata_props(config, options).items():
            proto.metadata_props.add(key=key, value=value)
        stages.update(1)
        stages.set_postfix_str("write bundle")
        big = sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
        onnx.save_model(proto, str(graph_path), save_as_external_data=big, location="model.onnx.data")
        inputs = _tensor_specs(i for i in proto.graph.input if i.name != LOGITS_TO_KEEP)
        sidecars = write_common_files(tmp, tokenizer_json, config, options.page_len, spec)
        genai_notes = write_genai_config(tmp, config, inputs, sidecars, tokenizer_json, options.kv_io == "shared")
        stages.update(1)
        gqa = options.attention == "ort-gqa" or options.kv_io == "shared"
        attention_op = "GroupQueryAttention" if gqa else "Attention"
        precision = {
            "weights": options.weights,
            "int4_format": options.int4_format if options.weights == "int4" else None,
            "int4_scheme": options.int4_scheme if options.weights == "int4" else None,
            "kept_file_blocks": len(kept) if options.weights in ("int4", "int8") else 0,
            "block_size": 32 if options.weights == "int4" else None,
            "kv": options.kv,
            "embedding": embedding,
            "lm_head": head_precision,
            "quantized_layers": quantized,
        }
        graph = {
            "file": "model.onnx",
            "opset": options.opset,
            "attention_op": attention_op,
            "inputs": inputs,
            "outputs": _tensor_specs(proto.graph.output),
            "kv": _kv_contract(config, spec, options.query_outputs, options.kv_io),
            "constraints": graph_constraints(options) + genai_notes,
            "fusions": fusions,
            **({"logits_to_keep": LOGITS_TO_KEEP} if keeps_logits else {}),
            **({"moe": moe} if moe else {}),
        }
        manifest = common_manifest("onnx", config, parameters, precision, graph, sidecars, command, started)
        manifest = finalize_bundle(tmp, manifest)
        stages.update(1)
    stages.close()
    return manifest


def _per_layer_feature(config: OmniCoderConfig) -> str | None:
    """The first feature that makes layers attend differently, or that --kv-io shared's rewrite (one window, one
    RoPE table, no soft-cap) would drop; None when every layer is the same plain attention."""
    features = {
        "sliding and full attention layers": len({config.layer_window(i) for i in range(config.n_layers)}) > 1,
        "a second RoPE base (rope_local_theta)": config.rope_local_theta > 0,
        "NoPE layers": bool(config.nope_layers),
        "partial rotary (rotary_dim)": config.rope_dim != config.head_dim,
        "longrope scaling": config.rope_scaling.type == "longrope",
        "attention logit soft-capping": config.attn_logit_softcap > 0,
    }
    return next((name for name, present in features.items() if present), None)


def _rotary_tables(model) -> tuple | None:
    """(cos, sin) [context, rope dim / 2] of the model's RoPE at positions 0..context-1 (for GroupQueryAttention's
    own rotary), or None when the model has no single rotary module."""
    import torch

    rotary = getattr(model, "rotary", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        return None
    with torch.no_grad():
        cos, sin = rotary(torch.arange(model.config.max_seq_len)[None])
    half = cos.shape[-1] // 2
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


def _kv_contract(config: OmniCoderConfig, spec: KVQuantSpec, queries: bool, kv_io: str) -> dict:
    contract = kv_contract(config, spec)
    if kv_io == "present" and any(config.layer_window(i) for i in range(config.n_layers)):
        contract["windows"] = [config.layer_window(i) for i in range(config.n_layers)]  # runtimes/kv_window.py
    if not queries:
        contract.pop("query", None)
    if kv_io == "shared":
        contract["io"] = "shared"
    return contract


def _file_blocks(model, options: OnnxExportOptions) -> dict:
    """The GGUF blocks a `gguf:` model keeps in this export (none for other models)."""
    from omnicoder.gguf_blocks import prequantized_layers

    blocks = getattr(model, "gguf_blocks", None)
    if not blocks:
        return {}
    return prequantized_layers(blocks, 4 if options.weights == "int4" else 8, model.config.tie_embeddings)


def export_from_cli(model, tokenizer, args, command: str) -> dict:
    """`omnicoder-export --target onnx` (see export/cli.py)."""
    options = OnnxExportOptions(
        weights=args.weights,
        int4_format=args.int4_format,
        int4_scheme=args.int4_scheme,
        transcode=not args.no_transcode,
        attention=args.attention,
        opset=args.opset,
        page_len=args.page_len,
        kv=args.kv,
        kv_group=args.kv_group,
        kv_rotation=DEFAULT_ROTATION[args.kv] if args.kv_rotation == "auto" else args.kv_rotation,
        fuse=not args.no_fuse,
        query_outputs=args.query_outputs,
        kv_io=args.kv_io,
        moe_lowering=args.moe_lowering,
    )
    return export_onnx_bundle(model, tokenizer.to_json(), args.out, options, command=command)
