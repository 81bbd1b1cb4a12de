"""`omnicoder-export --target executorch`: model -> torch.export -> XNNPACK-lowered .pte -> bundle directory.

Weights: fp32, or 8da4w (torchao: int8 dynamic activations, int4 weights in groups of 32; every nn.Linear of the
decoder blocks and MTP heads), delegated to XNNPACK. For a subword vocabulary (> 1024) 8da4w also takes the LM head
(a tied one gets its own quantized copy: XNNPACK's packed weights cannot be shared with a lookup table) and the
embedding, int8 (or int4) weight-only in groups of 32, which ExecuTorch's quant fusion turns into
`quantized_decomposed::embedding_byte` / `embedding_4bit` (the runtime needs `executorch.kernels.quantized`).
KV: `buffer` (default; the cache lives in the program as mutable buffers, ExecuTorch's LLM convention, with
`llama::update_cache` + `llama::custom_sdpa`) or `io` (explicit past/present KV tensors like the ONNX graph).
The program also has the metadata methods ExecuTorch's LLM runners read (get_max_seq_len, get_vocab_size,
get_bos_id, get_eos_ids, use_kv_cache, use_sdpa_with_kv_cache, enable_dynamic_shape, ...). See docs/executorch.md.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omnicoder.export.bundle_writer import DEFAULT_PAGE_LEN, common_manifest, kv_contract, write_common_files
from omnicoder.runtimes.bundle import finalize_bundle
from tqdm import tqdm

from omnicoder import io_contract as io
from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.fsutil import atomic_directory

WEIGHT_MODES = ("fp32", "8da4w")
KV_MODES = ("buffer", "io")
GROUP_SIZE = 32
LM_HEAD_VOCAB = 1024  # 8da4w quantizes an untied LM head by default above this vocabulary size
PROGRAM_FILE = "model.pte"
# graph nodes that are bookkeeping, not compute (not counted); SymInt arithmetic (add, le, getitem) has no '.'
_BOOKKEEPING = ("aten.sym_size", "aten._assert_scalar", "aten._local_scalar_dense", "aten.sym_constrain_range")


@dataclass
class ExecuTorchExportOptions:
    weights: str = "fp32"
    kv: str = "buffer"
    max_seq_len: int = 0  # KV capacity / longest sequence in tokens; 0 = the model's context
    attention: str = "fused"  # fused: llama::update_cache + llama::custom_sdpa; reference: decomposed SDPA
    page_len: int = DEFAULT_PAGE_LEN
    qparams: str = "affine"  # torchao's intx_choose_qparams_algorithm for 8da4w: affine | hqq_scale_only
    delegate_norms: bool = True  # RMSNorm as XNNPACK-delegable ops (RMSNorm.delegable)
    quantize_lm_head: bool | None = None  # 8da4w LM head; None: only over a vocab > 1024 (tied or not)
    quantize_embedding: bool | None = None  # 8da4w: weight-only embedding; None: only over a vocab > 1024
    embedding_bits: int = 8  # 8 (embedding_byte) or 4 (embedding_4bit), groups of 32

    def lm_head_quantized(self, config: OmniCoderConfig) -> bool:
        """Over a subword vocabulary the LM head is the largest single weight read per token, so 8da4w takes it by
        default (as ExecuTorch's own llama export); a tied head is untied into its own quantized copy."""
        if self.weights != "8da4w" or config.d_model % GROUP_SIZE:
            return False
        return self.quantize_lm_head if self.quantize_lm_head is not None else config.vocab_size > LM_HEAD_VOCAB

    def embedding_quantized(self, config: OmniCoderConfig) -> bool:
        """Weight-only embedding (groups of 32) with 8da4w over a subword vocabulary; byte vocabularies keep fp32."""
        if self.weights != "8da4w" or config.d_model % GROUP_SIZE:
            return False
        wanted = self.quantize_embedding
        return wanted if wanted is not None else config.vocab_size > LM_HEAD_VOCAB

    def validate(self, config: OmniCoderConfig) -> ExecuTorchExportOptions:
        from omnicoder.export.executorch_program import ATTENTION_MODES

        if self.weights not in WEIGHT_MODES:
            raise OmniCoderError(f"--weights {self.weights} is unknown for executorch; use {' or '.join(WEIGHT_MODES)}")
        if self.kv not in KV_MODES:
            raise OmniCoderError(f"--kv {self.kv} is unknown for executorch; use {' or '.join(KV_MODES)}")
        if self.attention not in ATTENTION_MODES:
            raise OmniCoderError(f"attention {self.attention!r} is unknown; use {' or '.join(ATTENTION_MODES)}")
        if self.max_seq_len < 0:
            raise OmniCoderError(f"--max-seq-len must be >= 0, got {self.max_seq_len}")
        self.max_seq_len = self.max_seq_len or config.max_seq_len
        if self.max_seq_len < 2:
            raise OmniCoderError(f"--max-seq-len {self.max_seq_len} is too small; use at least 2 (e.g. 512)")
        if self.embedding_bits not in (4, 8):
            raise OmniCoderError(f"embedding bits {self.embedding_bits} is unsupported; use 8 or 4")
        return self


def quantize_8da4w(model, qparams: str = "affine", lm_head: bool = False) -> int:
    """torchao 8da4w on the linears of the blocks and MTP heads, and the LM head if asked (in place); returns how
    many were quantized."""
    import torch
    from torch import nn
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    def wanted(module, fqn: str) -> bool:
        return (
            isinstance(module, nn.Linear)
            and (fqn.split(".")[0] in ("layers", "mtp_heads") or (lm_head and fqn == "lm_head"))
            and module.in_features % GROUP_SIZE == 0
        )

    count = sum(1 for fqn, m in model.named_modules() if wanted(m, fqn))
    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE), intx_choose_qparams_algorithm=qparams
    )
    with torch.no_grad():
        quantize_(model, config, filter_fn=wanted)
    return count


def quantize_embedding(model, bits: int) -> None:
    """torchao weight-only int8/int4 (groups of 32) on the embedding, in place. A tied LM head keeps its own
    weight (quantize_ gives the embedding a new parameter), so call this after or before quantize_8da4w alike."""
    import torch
    from torch import nn
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    dtype = torch.int8 if bits == 8 else torch.int4
    config = IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(GROUP_SIZE))
    with torch.no_grad():
        quantize_(model, config, filter_fn=lambda module, fqn: fqn == "embed" and isinstance(module, nn.Embedding))


def kv_buffer_bytes(config: OmniCoderConfig, capacity: int) -> dict:
    """fp32 bytes of the in-program KV buffers for `capacity` tokens: in total and per token of context."""
    per_token = 4 * config.n_layers * config.kv_heads * (config.kv_key_dim + config.kv_value_dim)
    return {"total": per_token * capacity, "per_token": per_token}


def metadata_methods(config: OmniCoderConfig, options: ExecuTorchExportOptions) -> dict:
    """Constant methods of the program, named as ExecuTorch's LLM runners read them."""
    return {
        "get_max_seq_len": options.max_seq_len,
        "get_max_context_len": options.max_seq_len,
        "get_vocab_size": config.vocab_size,
        "get_bos_id": config.bos_id,
        "get_eos_ids": [config.eos_id],
        "get_n_layers": config.n_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": options.attention == "fused",
        "enable_dynamic_shape": True,
    }


def _trace_buffer(model, options: ExecuTorchExportOptions):
    """torch.export the in-program-cache decoder: forward(tokens [1, T], input_pos [1]), T dynamic."""
    import torch
    from omnicoder.export.executorch_program import ExecuTorchCacheDecoder

    decoder = ExecuTorchCacheDecoder(model, options.max_seq_len, options.attention).eval()
    seq = torch.export.Dim("sequence", min=1, max=options.max_seq_len)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([0], dtype=torch.long))
    shapes = ({1: seq}, {0: torch.export.Dim.STATIC})
    program = torch.export.export(decoder, example, dynamic_shapes=shapes, strict=False)
    return program, decoder.cache_buffers()


def _trace_io(model, options: ExecuTorchExportOptions):
    """torch.export the KV-in/KV-out decode step (batch 1; sequence and past_sequence dynamic)."""
    import torch
    from omnicoder.export.executorch_program import IOStep

    from omnicoder.decode_step import example_inputs

    ids, positions, past = example_inputs(model.config, batch=1, seq=3, past=5)
    seq = torch.export.Dim("sequence", min=1, max=options.max_seq_len)
    past_len = torch.export.Dim("past_sequence", min=0, max=options.max_seq_len)
    shapes = {io.INPUT_IDS: {1: seq}, io.POSITION_IDS: {1: seq}, "past": tuple({2: past_len} for _ in past)}
    step = IOStep(model, options.attention).eval()
    program = torch.export.export(step, (ids, positions, *past), dynamic_shapes=shapes, strict=False)
    return program.run_decompositions({}), []


def _op_name(node) -> str:
    """'aten.mean.dim', 'llama.custom_sdpa.default', 'add' (SymInt arithmetic), ..."""
    target = node.target
    if getattr(target, "__name__", "") == "auto_functionalized_v2":  # an in-place custom op, e.g. update_cache
        target = node.args[0]
    op = getattr(target, "_op", None)
    if hasattr(op, "_schema"):  # an EdgeOpOverload wraps the aten/custom OpOverload
        return str(op)
    if hasattr(target, "_schema"):  # an OpOverload: 'llama.update_cache.default'
        return str(target)
    return getattr(target, "__name__", str(target))


def delegation_summary(graph_module) -> dict:
    """Compute nodes inside XNNPACK delegates vs left to ExecuTorch's portable/optimized/custom kernels."""
    delegated, outside = Counter(), Counter()
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            inner = getattr(graph_module, node.name).original_module.graph.nodes
            delegated.update(_op_name(n) for n in inner if n.op == "call_function")
        elif node.op == "call_function" and not node.name.startswith("executorch_call_delegate"):
            outside[_op_name(node)] += 1
    delegated = Counter({k: v for k, v in delegated.items() if "." in k})
    outside = Counter({k: v for k, v in outside.items() if not k.startswith(_BOOKKEEPING) and "." in k})
    return {
        "delegate": "XnnpackBackend",
        "delegated_subgraphs": subgraphs,
        "delegated_nodes": sum(delegated.values()),
        "non_delegated_nodes": sum(outside.values()),
        "non_delegated_ops": dict(sorted(outside.items())),
    }


def lower_to_pte(program, metadata: dict, init_buffers: list[str], quant_fusion: bool = False) -> tuple[bytes, dict]:
    """XNNPACK partition + lowering + ExecuTorch emission; returns (.pte bytes, delegation summary).
    `quant_fusion`: fuse dequantize + embedding into quantized_decomposed::embedding_* (a quantized embedding)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    edge = to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
        constant_methods=metadata,
    )
    summary = delegation_summary(edge.exported_program().graph_module)
    passes = [InitializedMutableBufferPass(init_buffers)] if init_buffers else []
    backend = ExecutorchBackendConfig(passes=passes, do_quant_fusion_and_const_prop=quant_fusion)
    program = edge.to_executorch(backend)
    if quant_fusion:
        summary = _with_fused_ops(summary, program.exported_program().graph_module)
    return program.buffer, summary


def _with_fused_ops(summary: dict, graph_module) -> dict:
    """The summary (taken before emission) with the quant fusion's result: each fused quantized_decomposed op
    replaces a torchao dequantize_affine + aten op pair it was made of."""
    fused = Counter(
        _op_name(n).rsplit(".", 1)[0] + ".default"
        for n in graph_module.graph.nodes
        if n.op == "call_function" and _op_name(n).startswith("quantized_decomposed.")
    )
    ops = Counter(summary["non_delegated_ops"])
    for name, count in fused.items():
        replaced = "aten.embedding.default" if ".embedding" in name else None
        ops.subtract({"torchao.dequantize_affine.default": count, **({replaced: count} if replaced else {})})
        ops[name] += count
    ops = {k: v for k, v in sorted(ops.items()) if v > 0}
    return {**summary, "non_delegated_nodes": sum(ops.values()), "non_delegated_ops": ops}


def _lm_head_precision(config: OmniCoderConfig, options: ExecuTorchExportOptions) -> str:
    if options.lm_head_quantized(config):
        return "8da4w (int4 group 32" + (", an untied copy of the embedding)" if config.tie_embeddings else ")")
    return "fp32 (tied to the embedding)" if config.tie_embeddings else "fp32"


def _embedding_precision(config: OmniCoderConfig, options: ExecuTorchExportOptions) -> str:
    if not options.embedding_quantized(config):
        return "fp32"
    op = "embedding_byte" if options.embedding_bits == 8 else "embedding_4bit"
    return f"int{options.embedding_bits} weight-only, group {GROUP_SIZE} (quantized_decomposed::{op})"


def _program_io(config: OmniCoderConfig, options: ExecuTorchExportOptions) -> tuple[list[dict], list[dict]]:
    if options.kv == "buffer":
        inputs = [
            {"name": "tokens", "dtype": "int64", "shape": [1, "sequence"]},
            {"name": "input_pos", "dtype": "int64", "shape": [1]},
        ]
        return inputs, [{"name": "logits", "dtype": "float32", "shape": [1, "sequence", config.vocab_size]}]
    past, present = io.kv_names(config)
    c, seq = config, "sequence"
    inputs = [
        {"name": io.INPUT_IDS, "dtype": "int64", "shape": [1, seq]},
        {"name": io.POSITION_IDS, "dtype": "int64", "shape": [1, seq]},
    ]
    widths = [c.kv_key_dim, c.kv_value_dim] * c.n_layers if c.kv_value_dim else [c.kv_key_dim] * c.n_layers
    inputs += [
        {"name": n, "dtype": "float32", "shape": [1, c.kv_heads, "past_sequence", w]} for n, w in zip(past, widths)
    ]
    shapes = {
        io.LOGITS: [1, seq, c.vocab_size],
        io.MTP_LOGITS: [1, seq, c.n_mtp, c.vocab_size],
        io.RETENTION: [1, seq, 3],
    }
    shapes |= {n: [1, c.kv_heads, "total_sequence", w] for n, w in zip(present, widths)}
    shapes |= {n: [1, c.n_heads, seq, c.kv_key_dim] for n in io.query_names(c)}
    outputs = [{"name": n, "dtype": "float32", "shape": shapes[n]} for n in io.output_names(config)]
    return inputs, outputs


def _constraints(options: ExecuTorchExportOptions) -> list[str]:
    notes = [
        "batch is 1; positions are absolute",
        f"sequence is 1..{options.max_seq_len} tokens per call",
    ]
    if options.kv == "buffer":
        notes += [
            "the KV cache is inside the program (graph.executorch.kv_buffers); graph.kv describes its per-token "
            "shape, its past_/present_ names are not program inputs",
            "input_pos is the absolute position of the first token; one call's tokens take consecutive positions "
            f"and must end at or before position {options.max_seq_len} (the capacity)",
            "starting again at input_pos 0 resets the cache: attention never reads slots at or after the "
            "current position",
        ]
    else:
        notes.append(f"past_sequence is 0..{options.max_seq_len}; the first call passes empty past tensors")
    return notes


def _graph_section(config, options, summary, buffers, methods) -> dict:
    inputs, outputs = _program_io(config, options)
    executorch = {
        "kv_mode": options.kv,
        "max_seq_len": options.max_seq_len,
        "methods": methods,
        "attention": options.attention,
        **summary,
    }
    if options.kv == "buffer":
        executorch["kv_buffers"] = {
            "layout": "BSHD" if options.attention == "fused" else "BNSH",
            "names": buffers,
            "capacity": options.max_seq_len,
            "initialized": "zeros (InitializedMutableBufferPass)",
            "dtype": "float32",
            "bytes": kv_buffer_bytes(config, options.max_seq_len),
        }
    fused = options.attention == "fused"
    return {
        "file": PROGRAM_FILE,
        "attention_op": "llama::custom_sdpa" if fused else "aten::scaled_dot_product_attention (decomposed)",
        "inputs": inputs,
        "outputs": outputs,
        "kv": kv_contract(config),
        "constraints": _constraints(options),
        "executorch": executorch,
    }


def export_executorch_bundle(
    model, tokenizer_json: str, out: str | Path, options: ExecuTorchExportOptions, command: str = ""
) -> dict:
    """Export `model` (an OmniCoder in fp32) into a bundle at `out`; returns the manifest.

    8da4w quantizes the model's linears in place: pass a copy to keep the float model.
    """
    import torch
    from omnicoder.export.executorch_program import delegable_norms, load_custom_ops

    config: OmniCoderConfig = model.config
    options.validate(config)
    started = time.perf_counter()
    parameters = model.num_parameters()
    model.eval()
    stages = tqdm(total=4, desc="export executorch", unit="stage")
    load_custom_ops()
    quantized = 0
    if options.weights == "8da4w":
        stages.set_postfix_str("quantize 8da4w (torchao)")
        quantized = quantize_8da4w(model, options.qparams, options.lm_head_quantized(config))
        if options.embedding_quantized(config):
            quantize_embedding(model, options.embedding_bits)
    stages.update(1)
    with atomic_directory(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stages.set_postfix_str("torch.export")
        trace = _trace_buffer if options.kv == "buffer" else _trace_io
        with delegable_norms(model) if options.delegate_norms else contextlib.nullcontext():
            program, buffers = trace(model, options)
        stages.update(1)
        stages.set_postfix_str("XNNPACK lowering + .pte emission")
        methods = metadata_methods(config, options)
        init = ["k_cache", "v_cache"] if buffers else []
        pte, summary = lower_to_pte(program, methods, init, options.embedding_quantized(config))
        (tmp / PROGRAM_FILE).write_bytes(pte)
        stages.update(1)
        stages.set_postfix_str("write bundle")
        sidecars = write_common_files(tmp, tokenizer_json, config, options.page_len)
        precision = {
            "weights": options.weights,
            "block_size": GROUP_SIZE if options.weights == "8da4w" else None,
            "activations": "int8 dynamic (per token)" if options.weights == "8da4w" else "fp32",
            "kv": "fp32",
            "embedding": _embedding_precision(config, options),
            "lm_head": _lm_head_precision(config, options),
            "quantized_layers": quantized,
        }
        graph = _graph_section(config, options, summary, buffers, methods)
        manifest = common_manifest("executorch", config, parameters, precision, graph, sidecars, command, started)
        manifest = finalize_bundle(tmp, manifest)
        stages.update(1)
    stages.close()
    return manifest


def export_from_cli(model, tokenizer, args, command: str) -> dict:
    """`omnicoder-export --target executorch` (see export/cli.py)."""
    options = ExecuTorchExportOptions(
        weights=args.weights, kv=args.kv, max_seq_len=args.max_seq_len, page_len=args.page_len
    )
    manifest = export_executorch_bundle(model, tokenizer.to_json(), args.out, options, command=command)
    section = manifest["graph"]["executorch"]
    outside = ", ".join(f"{op} x{n}" for op, n in section["non_delegated_ops"].items())
    print(
        f"XNNPACK: {section['delegated_nodes']} nodes delegated in {section['delegated_subgraphs']} subgraphs; "
        f"{section['non_delegated_nodes']} not delegated ({outside}); KV {options.kv}, "
        f"max_seq_len {section['max_seq_len']}",
        file=sys.stderr,
    )
    return manifest
