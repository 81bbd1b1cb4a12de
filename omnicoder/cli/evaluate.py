"""`omnicoder-eval`: bits per byte of a model on files (teacher forcing, windowed), with gzip and xz
bits per byte of the same bytes for reference. With --json the last stdout line is a JSON object."""

from __future__ import annotations

import json
import sys

from omnicoder.cliutil import COUNT, THREADS, ArgumentParser, int_in
from omnicoder.errors import OmniCoderError, cli_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-eval", description=__doc__)
    p.add_argument(
        "--model", default="default", help="'default', a model directory, or hf:DIR (a Hugging Face checkpoint)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--files", nargs="+", help="files to score")
    src.add_argument("--heldout", action="store_true", help="score the default corpus' held-out split")
    p.add_argument("--window", type=COUNT, default=0, help="tokens of context per window (default: model context)")
    p.add_argument("--max-bytes", type=int_in(0, 1 << 62), default=0, help="score at most this many bytes (0: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.add_argument("--threads", type=THREADS, default=0)
    return p


def truncate(docs: list[bytes], max_bytes: int) -> list[bytes]:
    if max_bytes <= 0:
        return docs
    out, total = [], 0
    for doc in docs:
        if total >= max_bytes:
            break
        out.append(doc[: max_bytes - total])
        total += len(out[-1])
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.heldout:
        from omnicoder.data import find_corpus, read_documents

        docs = read_documents(find_corpus().heldout)
    else:
        from omnicoder.runtimes.scoring import read_files

        docs = read_files(args.files, "--files")
    docs = truncate(docs, args.max_bytes)
    import torch

    from omnicoder.evaluate import bits_per_byte, compressor_bits_per_byte
    from omnicoder.loading import load_model_and_tokenizer
    from omnicoder.runtimes.scoring import encode_documents

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    if args.window > model.config.max_seq_len:
        raise OmniCoderError(f"--window {args.window} exceeds the model's context {model.config.max_seq_len}")
    byte_level = model.config.tokenizer == "byte"
    token_docs, n_bytes = encode_documents(tokenizer, docs, byte_level, "--files")
    batch = 8 if byte_level else 1  # subword documents differ in length: no padding waste
    result = bits_per_byte(model, token_docs, args.window or None, batch, progress=True, n_bytes=n_bytes)
    result.update(compressor_bits_per_byte(docs))
    result["files"] = len(docs)
    print(f"bits per byte: {result['bits_per_byte']:.4f} over {result['bytes']} bytes in {len(docs)} file(s)")
    print(f"gzip -9: {result['gzip_bits_per_byte']:.4f}   xz -9e: {result['xz_bits_per_byte']:.4f}  (concatenated)")
    per_file = result["gzip_per_file_bits_per_byte"], result["xz_per_file_bits_per_byte"]
    print(f"gzip -9: {per_file[0]:.4f}   xz -9: {per_file[1]:.4f}  (each file alone)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
