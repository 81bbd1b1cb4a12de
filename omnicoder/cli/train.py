"""`omnicoder-train`: train (or resume) a model on a local text corpus (default: the Python stdlib)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields

from omnicoder.cliutil import COUNT, THREADS, ArgumentParser, float_in, int_in
from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError, cli_main
from omnicoder.presets import PRESETS, preset

# flags that must be >= 1 (the others count from 0); floats are finite and >= 0
AT_LEAST_ONE = ("batch_size", "seq_len", "eval_every", "eval_bytes", "save_every")


def _flag_type(name: str, default):
    if isinstance(default, float):
        return float_in(0.0, 1e6)
    if name == "seed":
        return int_in(-(1 << 63), (1 << 64) - 1)
    return int_in(1, 1 << 31) if name in AT_LEAST_ONE else COUNT


def build_parser() -> ArgumentParser:
    from omnicoder.train import TrainArgs

    p = ArgumentParser(prog="omnicoder-train", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="omnicoder-tiny", choices=sorted(PRESETS), help="named model config")
    src.add_argument("--config", help="a config.json to train instead of a preset")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--corpus", help="directory of .py files (default: this interpreter's standard library)")
    p.add_argument("--threads", type=THREADS, default=0, help="torch intra-op threads (0: torch's default)")
    defaults = TrainArgs()
    for f in fields(TrainArgs):
        if f.name in ("corpus", "history"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(getattr(defaults, f.name), bool):
            p.add_argument(flag, action="store_true")
        else:
            default = getattr(defaults, f.name)
            p.add_argument(flag, type=_flag_type(f.name, default), default=default)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from omnicoder.train import TrainArgs, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = OmniCoderConfig.load(args.config) if args.config else preset(args.preset)
    if config.tokenizer != "byte":
        raise OmniCoderError('omnicoder-train trains byte-level models only; set "tokenizer": "byte"')
    if args.seq_len > config.max_seq_len:
        raise OmniCoderError(f"--seq-len {args.seq_len} exceeds the config's max_seq_len {config.max_seq_len}")
    train_args = TrainArgs(**{f.name: getattr(args, f.name) for f in fields(TrainArgs) if f.name != "history"})
    torch.manual_seed(train_args.seed)
    state = train(config, args.out, train_args)
    last = state["history"][-1] if state["history"] else {}
    summary = {"step": state["step"], "tokens": state["tokens"], "seconds": round(state["seconds"], 1), **last}
    print(json.dumps(summary), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
