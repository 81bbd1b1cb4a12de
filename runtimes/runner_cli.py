"""What every bundle runner's CLI shares (ONNX, ExecuTorch): flags, scoring, generation and the stdout convention.
Torch-free.

Same flags and stdout convention as `omnicoder-generate`: stdout carries exactly the generated text; the stats
line goes to stderr; with --json the stats (or the score) are a JSON object on stdout's last line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from omnicoder.runtimes.chat_cli import add_chat_args, chat_prompt, chat_requested, print_stats, run_chat, write

from omnicoder.cliutil import COUNT, MEGABYTES, THREADS, ArgumentParser, add_sampling_args, read_prompt
from omnicoder.errors import OmniCoderError


def build_parser(prog: str, description: str | None, target: str, threads_help: str) -> ArgumentParser:
    """The runner flags: bundle, sampling, scoring, threads, --json and the KV paging group."""
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--bundle", required=True, help=f"bundle directory written by omnicoder-export --target {target}")
    add_sampling_args(p)
    p.add_argument("--score", nargs="+", metavar="FILE", help="report bits per byte of these files instead")
    p.add_argument("--score-window", type=COUNT, default=0, help="--score: tokens per window (default: the context)")
    p.add_argument("--threads", type=THREADS, default=0, help=threads_help)
    p.add_argument("--json", action="store_true", help="print stats (or the score) as JSON on the last line")
    add_chat_args(p)
    kv = p.add_argument_group("KV paging (see docs/bundle.md)")
    kv.add_argument("--window", type=COUNT, default=None, help="tokens of recent context attended (enables paging)")
    kv.add_argument(
        "--sink-pages",
        type=COUNT,
        default=0,
        help="pages at the start always attended (StreamingLLM sinks; 0 suits omnicoder-tiny)",
    )
    kv.add_argument(
        "--predicted-pages",
        type=COUNT,
        default=0,
        help="extra pages attended per step, chosen by the last query against page key summaries",
    )
    kv.add_argument("--kv-ram-budget-mb", type=MEGABYTES, default=0, help="resident KV before pages spill to disk")
    kv.add_argument("--page-len", type=COUNT, default=0, help="tokens per page (default: the bundle's sidecar)")
    ret = p.add_argument_group("KV retention under a budget (see docs/bundle.md, model.retention.json)")
    ret.add_argument(
        "--retention",
        choices=("learned", "streaming", "h2o"),
        default=None,
        help="learned: the model's retention head (rank + NF4 compress); streaming: sinks + recent; h2o: heavy hitters",
    )
    ret.add_argument(
        "--kv-budget-mb", type=MEGABYTES, default=0, help="--retention: resident KV budget (default: the sidecar's)"
    )
    return p


def retention_policy(args, bundle):
    """A RetentionPolicy when --retention is given, from the flags and the bundle's retention sidecar."""
    from omnicoder.runtimes.cache_factory import check_exclusive
    from omnicoder.runtimes.kv_retention import RetentionPolicy

    if getattr(args, "retention", None) is None:
        if getattr(args, "kv_budget_mb", 0):
            raise OmniCoderError("--kv-budget-mb applies with --retention; add --retention learned|streaming|h2o")
        return None
    check_exclusive(paging_requested(args), True)  # before the sidecar is read: the flags are wrong either way
    sidecar = bundle.sidecar("retention")
    if args.kv_budget_mb < 0:
        raise OmniCoderError(f"--kv-budget-mb must be > 0, got {args.kv_budget_mb}")
    if args.kv_budget_mb:
        budget = int(args.kv_budget_mb * 2**20)
    elif sidecar is not None:
        budget = sidecar["budget_bytes"]
    else:
        raise OmniCoderError("this bundle has no retention sidecar; pass --kv-budget-mb")
    settings = {} if sidecar is None else {"sink_tokens": sidecar["sink_tokens"]}
    if sidecar is not None:
        settings["compress"] = sidecar["compress"]["dtype"]
        settings["compress_group"] = sidecar["compress"]["group"]
        settings["recent_fraction"] = sidecar.get("recent_fraction", 0.75)
    return RetentionPolicy(budget, args.retention, **settings).validate()


def paging_requested(args) -> bool:
    return args.window is not None or args.kv_ram_budget_mb != 0


def paging_policy(args, bundle):
    """A PagingPolicy when any paging flag is given, else None (contiguous KV)."""
    from omnicoder.runtimes.kv_paging import PagingPolicy

    if not paging_requested(args):
        return None
    page_len = args.page_len or bundle.sidecar("kv_paging")["page_len"]
    return PagingPolicy(
        page_len=page_len,
        window=args.window or 0,
        sink_pages=args.sink_pages,
        predicted_pages=args.predicted_pages,
        ram_budget_bytes=int(args.kv_ram_budget_mb * 2**20),
    ).validate()


def score(backend, bundle, files: list[str], window: int) -> dict:
    """Bits per byte of `files`: windowed teacher forcing, or the whole file as one sequence through a paged cache."""
    from omnicoder.runtimes.scoring import bits_per_byte, encode_documents, read_files, streaming_bits_per_byte

    byte_level = bundle.manifest["tokenizer"]["type"] == "omnicoder-byte"
    docs, n_bytes = encode_documents(bundle.tokenizer(), read_files(files, "--score"), byte_level, "--score")
    model, context = bundle.model, backend.context_length
    if getattr(backend, "paging", None) is not None or getattr(backend, "retention", None) is not None:
        # each file as one sequence through the paged / budgeted cache
        result = streaming_bits_per_byte(backend, docs, model["bos_id"], progress=True, n_bytes=n_bytes)
    elif window > context:
        raise OmniCoderError(f"--score-window {window} exceeds the bundle's context {context}")
    else:
        bos, pad = model["bos_id"], model["pad_id"]
        result = bits_per_byte(backend.full_logits, docs, bos, pad, window or context, progress=True, n_bytes=n_bytes)
    return {**result, "files": len(docs)}


def run(args, make_backend: Callable) -> int:
    """Score (--score) or generate with the backend `make_backend(bundle)` builds; prints per the convention."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.decode_loop import generate_text
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    chat = chat_requested(args)
    if args.score:
        bundle = open_bundle(args.bundle)
        result = score(make_backend(bundle), bundle, args.score, args.score_window)
        print(
            f"bits per byte: {result['bits_per_byte']:.4f} over {result['bytes']} bytes ({result['tokens']} tokens, "
            f"perplexity {result['token_perplexity']:.3f}) in {result['files']} file(s)"
        )
        if args.json:
            print(json.dumps(result))
        return 0
    prompt = chat_prompt(args) if chat else read_prompt(args)
    sampler = Sampler(SamplingParams(args.temperature, args.top_k, args.top_p, args.seed))
    bundle = open_bundle(args.bundle)
    backend = make_backend(bundle)
    tokenizer = bundle.tokenizer()
    speculative = getattr(args, "speculative", 0) or 0
    if speculative:  # one stderr line when --speculative K cannot keep plain decoding's output here
        from omnicoder.runtimes.speculative import exactness_note

        note = exactness_note(backend, sampler, speculative)
        if note:
            print(note, file=sys.stderr)
    if chat:
        return run_chat(args, prompt, backend, tokenizer, sampler, "bundle")
    _, stats = generate_text(backend, tokenizer, prompt, args.max_new_tokens, sampler, write, speculative, args.draft)
    print_stats(args, stats)
    return 0
