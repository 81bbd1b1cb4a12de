"""`omnicoder-export`: lower a model to a device bundle (ONNX, ExecuTorch or Core ML).

Each target lives in its own module, `omnicoder.export.<target>_export`, imported lazily (their
toolchains take seconds to import) and exposing `export_from_cli(model, tokenizer, args, command)`.
"""

from __future__ import annotations

import shlex
import sys

from omnicoder.cliutil import ArgumentParser, int_in
from omnicoder.errors import OmniCoderError, cli_main

MAX_TOKENS = 1 << 24  # the largest context a bundle may declare (runtimes/schemas/manifest.schema.json)
MIN_OPSET, MAX_OPSET = 23, 24  # the standard Attention op; the newest opset the exporter's ops are written for

# target -> (module, weight modes, KV modes; the first is the default)
TARGETS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "onnx": ("omnicoder.export.onnx_export", ("int4", "fp32", "fp16", "int8"), ("fp32", "fp16", "u8", "nf4")),
    "executorch": ("omnicoder.export.executorch_export", ("fp32", "8da4w"), ("buffer", "io")),
    "coreml": ("omnicoder.export.coreml_export", ("fp16", "int4"), ("state", "io", "stream")),  # stream: alias of io
}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-export", description=__doc__)
    p.add_argument("--target", default="onnx", choices=tuple(TARGETS))
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded model), a model directory, hf:DIR (a Hugging Face checkpoint) or gguf:FILE",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="onnx: int4 (default) | fp32 | fp16 | int8; executorch: fp32 (default) | 8da4w; "
        "coreml: fp16 (default) | int4",
    )
    p.add_argument(
        "--kv",
        default=None,
        help="onnx: KV dtype fp32 (default) | fp16 | u8 | nf4; executorch: buffer (default) | io; "
        "coreml: state (default) | io (KV in / KV out; alias stream)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="bundle directory to write: new, empty, or an unchanged bundle (replaced atomically); never anything else",
    )
    p.add_argument(
        "--force", action="store_true", help="also replace a bundle at --out whose files were changed since export"
    )
    p.add_argument("--opset", type=int_in(1, 1000), default=MIN_OPSET, help="onnx: the ONNX opset (23 or 24)")
    p.add_argument(
        "--attention",
        default="onnx",
        choices=("onnx", "ort-gqa"),
        help="onnx: the standard Attention op; ort-gqa: com.microsoft.GroupQueryAttention (GQA models)",
    )
    p.add_argument(
        "--int4-format",
        default="qdq",
        choices=("qdq", "matmulnbits"),
        help="qdq: DequantizeLinear(int4)+MatMul (ORT fuses it to MatMulNBits); matmulnbits: emit it directly",
    )
    p.add_argument(
        "--int4-scheme",
        default="sym",
        choices=("sym", "asym"),
        help="onnx int4: sym = signed codes, one scale per block of 32; asym = a zero point per block too "
        "(MatMulNBits with packed uint4 zero points; SmolLM2-135M: +14.9%% bits/byte vs sym +12.4%%, "
        "docs/benchmarks.md)",
    )
    p.add_argument(
        "--no-transcode",
        action="store_true",
        help="onnx and coreml, gguf:FILE models: quantize the dequantized weights again instead of keeping the file's "
        "Q4_0 / Q4_1 / Q8_0 blocks (the default keeps them: the bundle computes what the file holds)",
    )
    p.add_argument(
        "--no-fuse",
        action="store_true",
        help="onnx: keep the converter's graph (no merged q/k/v and gate/up linears, skip+RMSNorm or BSH attention)",
    )
    p.add_argument(
        "--kv-io",
        default="present",
        choices=("present", "shared"),
        help="onnx: present = the graph returns past + new KV (paging, retention, the apps use it); shared = "
        "fixed-capacity KV buffers updated in place by GroupQueryAttention (GQA models; fastest decode)",
    )
    p.add_argument(
        "--moe-lowering",
        default="auto",
        choices=("auto", "ort", "gather", "dense"),
        help="onnx, MoE models: ort = one com.microsoft.MoE / QMoE node per layer (auto's choice for SiLU experts); "
        "gather / dense = standard ops only (the chosen experts' weights gathered per token / every expert run)",
    )
    p.add_argument(
        "--query-outputs",
        action="store_true",
        help="onnx: also output each layer's queries (needed by --predicted-pages and --retention h2o)",
    )
    p.add_argument(
        "--page-len", type=int_in(1, MAX_TOKENS), default=64, help="tokens per KV page in the paging sidecar"
    )
    p.add_argument(
        "--context",
        type=int_in(0, MAX_TOKENS),
        default=0,
        help="export a long-context variant (e.g. 32768, 131072) with RoPE scaling",
    )
    p.add_argument("--rope-scaling", default="yarn", choices=("yarn", "linear"), help="scaling for --context")
    p.add_argument(
        "--max-seq-len",
        type=int_in(0, MAX_TOKENS),
        default=0,
        help="executorch --kv buffer / coreml --kv state: KV capacity in tokens (default: the model's context)",
    )
    p.add_argument(
        "--kv-group", type=int_in(2, 65536), default=32, help="onnx --kv u8/nf4: values per scale (power of two)"
    )
    p.add_argument(
        "--kv-rotation",
        default="auto",
        choices=("auto", "none", "hadamard"),
        help="onnx --kv u8/nf4: block-Hadamard-rotate KV rows before quantizing (auto: on for nf4, where it pays)",
    )
    p.add_argument(
        "--deployment-target",
        default="iOS18",
        choices=("iOS17", "iOS18"),
        help="coreml only; --kv state and --weights int4 need iOS18",
    )
    return p


def _resolve_modes(args) -> None:
    """Fill the per-target defaults of --weights/--kv and reject modes the target does not have."""
    _, weights, kv_modes = TARGETS[args.target]
    args.weights = args.weights or weights[0]
    args.kv = args.kv or kv_modes[0]
    if args.weights not in weights:
        raise OmniCoderError(
            f"--weights {args.weights} is not available for --target {args.target}; use one of {', '.join(weights)}"
        )
    if args.kv not in kv_modes:
        raise OmniCoderError(
            f"--kv {args.kv} is not available for --target {args.target}; use one of {', '.join(kv_modes)}"
        )
    if args.page_len <= 0:
        raise OmniCoderError(f"--page-len must be > 0, got {args.page_len}")
    if args.max_seq_len < 0:
        raise OmniCoderError(f"--max-seq-len must be >= 0, got {args.max_seq_len}")
    if args.kv_group & (args.kv_group - 1):
        raise OmniCoderError(f"--kv-group {args.kv_group} must be a power of two (e.g. 32)")
    if args.target == "onnx" and not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise OmniCoderError(f"--opset {args.opset} is not supported; use {MIN_OPSET} or {MAX_OPSET}")


def check_finite_weights(model) -> None:
    """Refuse weights with NaN or Inf: the bundle would run and emit garbage."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise OmniCoderError(
                f"the model's weights hold NaN or Inf ({name}); the checkpoint is corrupt: retrain it or re-download it"
            )


@cli_main
def main(argv: list[str] | None = None) -> int:
    import importlib

    from omnicoder.export.out_dir import check_out, check_replaceable

    args = build_parser().parse_args(argv)
    _resolve_modes(args)
    check_out(args.out, args.force)  # before anything is loaded or written
    module_name = TARGETS[args.target][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"onnx": "onnx", "executorch": "executorch", "coreml": "coreml"}[args.target]
        raise OmniCoderError(
            f"--target {args.target} needs {exc.name}; install it with pip install 'omnicoder[{extra}]'"
        ) from None

    from omnicoder.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model)
    check_finite_weights(model)
    if args.context:
        from omnicoder.long_context import extend_context

        model = extend_context(model, args.context, args.rope_scaling)
    command = "omnicoder-export " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from omnicoder.fsutil import replacement_guard

    with replacement_guard(lambda path: check_replaceable(path, args.out, args.force)):
        manifest = module.export_from_cli(model, tokenizer, args, command)
    size = sum(f["bytes"] for f in manifest["files"].values())
    info = manifest["export"]
    print(
        f"wrote {args.out}: {size / 1e6:.2f} MB, {args.target} {args.weights} weights, KV {args.kv}; "
        f"export took {info['seconds']:.1f} s, peak memory {info['peak_rss_mb']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
