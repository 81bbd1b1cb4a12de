"""`omnicoder-export`: lower a model to a device bundle (ONNX now; Core ML and ExecuTorch join later)."""

from __future__ import annotations

import shlex
import sys

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main

TARGETS = ("onnx",)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-export", description=__doc__)
    p.add_argument("--target", default="onnx", choices=TARGETS)
    p.add_argument("--model", default="default", help="'default' (the embedded model) or a model directory")
    p.add_argument("--weights", default="int4", choices=("fp32", "fp16", "int4", "int8"))
    p.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument("--opset", type=int, default=23)
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
    p.add_argument("--page-len", type=int, default=64, help="tokens per KV page in the paging sidecar")
    p.add_argument(
        "--context", type=int, default=0, help="export a long-context variant (e.g. 32768, 131072) with RoPE scaling"
    )
    p.add_argument("--rope-scaling", default="yarn", choices=("yarn", "linear"), help="scaling for --context")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.page_len <= 0:
        raise OmniCoderError(f"--page-len must be > 0, got {args.page_len}")
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle

    from omnicoder.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model)
    if args.context:
        from omnicoder.long_context import extend_context

        model = extend_context(model, args.context, args.rope_scaling)
    options = OnnxExportOptions(
        weights=args.weights,
        int4_format=args.int4_format,
        attention=args.attention,
        opset=args.opset,
        page_len=args.page_len,
    )
    command = "omnicoder-export " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    manifest = export_onnx_bundle(model, tokenizer.to_json(), args.out, options, command=command)
    size = sum(f["bytes"] for f in manifest["files"].values())
    info = manifest["export"]
    print(
        f"wrote {args.out}: {size / 1e6:.2f} MB, {args.weights} weights, {manifest['graph']['attention_op']} "
        f"attention; export took {info['seconds']:.1f} s, peak memory {info['peak_rss_mb']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
