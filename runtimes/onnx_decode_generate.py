"""Generate or score with an ONNX bundle, using only onnxruntime + numpy (no torch).

    python runtimes/onnx_decode_generate.py --bundle DIR --prompt TEXT [sampling flags]
    python runtimes/onnx_decode_generate.py --bundle DIR --score FILE... [--json]

Same flags and stdout convention as `omnicoder-generate`: stdout carries exactly the generated text;
the stats line goes to stderr; with --json the stats (or the score) are a JSON object on stdout's last line.
"""

from __future__ import annotations

import json
import sys

from omnicoder.cliutil import ArgumentParser, add_sampling_args, read_prompt
from omnicoder.errors import OmniCoderError, cli_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-onnx-generate", description=__doc__)
    p.add_argument("--bundle", required=True, help="bundle directory written by omnicoder-export --target onnx")
    add_sampling_args(p)
    p.add_argument("--score", nargs="+", metavar="FILE", help="report bits per byte of these files instead")
    p.add_argument("--score-window", type=int, default=0, help="--score: tokens per window (default: the context)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--provider", default=None, help="execution provider, e.g. CPU, CoreML, NNAPI, XNNPACK")
    p.add_argument("--json", action="store_true", help="print stats (or the score) as JSON on the last line")
    kv = p.add_argument_group("KV paging (see docs/bundle.md)")
    kv.add_argument("--window", type=int, default=None, help="tokens of recent context attended (enables paging)")
    kv.add_argument(
        "--sink-pages",
        type=int,
        default=0,
        help="pages at the start always attended (StreamingLLM sinks; 0 suits omnicoder-tiny)",
    )
    kv.add_argument(
        "--predicted-pages",
        type=int,
        default=0,
        help="extra pages attended per step, chosen by the last query against page key summaries",
    )
    kv.add_argument("--kv-ram-budget-mb", type=float, default=0, help="resident KV before pages spill to disk")
    kv.add_argument("--page-len", type=int, default=0, help="tokens per page (default: the bundle's sidecar)")
    return p


def score(backend, bundle, files: list[str], window: int) -> dict:
    from omnicoder.runtimes.scoring import bits_per_byte, read_files, streaming_bits_per_byte

    if bundle.manifest["tokenizer"]["type"] != "omnicoder-byte":
        raise OmniCoderError("--score measures bits per byte and needs a byte-level model bundle")
    docs = read_files(files, "--score")
    if backend.paging is not None:  # score each file as one sequence through the paged, windowed cache
        result = streaming_bits_per_byte(backend, docs, bundle.model["bos_id"], progress=True)
        result["files"] = len(docs)
        return result
    context = bundle.model["context_length"]
    if window > context:
        raise OmniCoderError(f"--score-window {window} exceeds the bundle's context {context}")
    result = bits_per_byte(
        backend.full_logits, docs, bundle.model["bos_id"], bundle.model["pad_id"], window or context, progress=True
    )
    result["files"] = len(docs)
    return result


def paging_policy(args, bundle):
    """A PagingPolicy when any paging flag is given, else None (contiguous KV)."""
    from omnicoder.runtimes.kv_paging import PagingPolicy

    if args.window is None and args.kv_ram_budget_mb == 0:
        return None
    page_len = args.page_len or bundle.sidecar("kv_paging")["page_len"]
    return PagingPolicy(
        page_len=page_len,
        window=args.window or 0,
        sink_pages=args.sink_pages,
        predicted_pages=args.predicted_pages,
        ram_budget_bytes=int(args.kv_ram_budget_mb * 2**20),
    ).validate()


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.decode_loop import generate_text
    from omnicoder.runtimes.onnx_session import OnnxBackend, create_session
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    if args.score:
        bundle = open_bundle(args.bundle)
        backend = OnnxBackend(bundle, create_session(bundle, args.threads, args.provider), paging_policy(args, bundle))
        result = score(backend, bundle, args.score, args.score_window)
        print(f"bits per byte: {result['bits_per_byte']:.4f} over {result['bytes']} bytes in {result['files']} file(s)")
        if args.json:
            print(json.dumps(result))
        return 0
    prompt = read_prompt(args)
    sampler = Sampler(SamplingParams(args.temperature, args.top_k, args.top_p, args.seed))
    bundle = open_bundle(args.bundle)
    backend = OnnxBackend(bundle, create_session(bundle, args.threads, args.provider), paging_policy(args, bundle))
    tokenizer = bundle.tokenizer()

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    _, stats = generate_text(backend, tokenizer, prompt, args.max_new_tokens, sampler, on_text=write)
    if args.json:
        sys.stdout.write("\n" + stats.json() + "\n")
    elif sys.stdout.isatty():
        sys.stdout.write("\n")
    print(stats.line(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
