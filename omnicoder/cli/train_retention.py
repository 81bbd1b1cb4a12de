"""`omnicoder-train-retention`: fit a model's retention head (keep / compress / drop) to the attention mass each
token receives later, leaving every other weight unchanged. Writes the model (config, weights, other files) to
--out; with --out equal to the model directory it updates it in place (atomically)."""

from __future__ import annotations

import json
import sys

from omnicoder.cliutil import THREADS, ArgumentParser, int_in
from omnicoder.errors import OmniCoderError, cli_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-train-retention", description=__doc__)
    p.add_argument("--model", default="default", help="'default' (the embedded model) or a model directory")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--windows", type=int_in(8, 1 << 20), default=256, help="training windows of the model's context (>= 8)"
    )
    p.add_argument("--horizon", type=int_in(1, 1 << 24), default=256, help="later queries whose attention counts")
    p.add_argument("--min-distance", type=int_in(1, 1 << 24), default=64, help="count attention from this distance on")
    p.add_argument("--steps", type=int_in(1, 1 << 31), default=400)
    p.add_argument("--threads", type=THREADS, default=0)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from omnicoder.data import find_corpus, read_documents, token_stream
    from omnicoder.loading import load_model_and_tokenizer
    from omnicoder.model_files import check_model_out
    from omnicoder.paths import resolve_model_dir
    from omnicoder.retention import RetentionTraining, train_retention_head
    from omnicoder.runtimes.input_files import read_text
    from omnicoder.weights import save_model

    source = resolve_model_dir(args.model)
    extra_names = {p.name for p in source.iterdir() if p.suffix in (".md", ".json") and p.name != "config.json"}
    check_model_out(args.out, {"config.json", "model.safetensors", "retention.json", *extra_names})
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, _ = load_model_and_tokenizer(args.model)
    if model.retention_head is None:
        raise OmniCoderError(f"model {args.model} has no retention head (config retention_head=false)")
    if not 0 < args.horizon < model.config.max_seq_len:
        raise OmniCoderError(f"--horizon must be in 1..{model.config.max_seq_len - 1}, got {args.horizon}")
    config = model.config
    stream = token_stream(read_documents(find_corpus().train), config.bos_id, config.eos_id)
    if not 0 < args.min_distance < args.horizon:
        raise OmniCoderError(f"--min-distance must be in 1..{args.horizon - 1}, got {args.min_distance}")
    settings = RetentionTraining(
        windows=args.windows, horizon=args.horizon, min_distance=args.min_distance, steps=args.steps
    )
    report = train_retention_head(model, stream, settings)
    extras = {name: read_text(source / name, "model file", "fix or remove it") for name in sorted(extra_names)}
    extras["retention.json"] = json.dumps({"training": settings.__dict__, "result": report}, indent=2) + "\n"
    save_model(model, args.out, extras)  # everything was read into memory: --out may be the model's own directory
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
