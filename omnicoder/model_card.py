"""Ship a finished training run as a model directory with a measured model card.

    python -m omnicoder.model_card --run runs/omnicoder-tiny --out omnicoder/models/omnicoder-tiny

Measures held-out bits per byte on the whole held-out split, next to gzip and xz of the same bytes,
and writes config.json + model.safetensors + MODEL_CARD.md + eval.json atomically.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main


def render_card(name: str, params: int, state: dict, result: dict, command: str, hardware: str) -> str:
    hours = state["seconds"] / 3600
    cfg = state["config"]
    shape = f"{cfg['n_layers']} / {cfg['d_model']} / {cfg['n_heads']}"
    kv_row = cfg["kv_latent_dim"] + cfg["rope_head_dim"]
    kv = f"{kv_row} floats (latent {cfg['kv_latent_dim']} + RoPE key {cfg['rope_head_dim']})"
    python = platform.python_version()
    history = "\n".join(
        f"| {h['step']} | {h['tokens'] / 1e6:.1f}M | {h['train_bpb']:.3f} | {h['heldout_bpb']:.3f} |"
        for h in state["history"]
    )
    return f"""# {name}

The embedded default model of OmniCoder: a byte-level Python code model with latent-KV (MLA) attention,
{cfg["n_mtp"]} multi-token-prediction heads and a retention head.

| | |
|---|---|
| parameters | {params:,} |
| layers / d_model / heads | {shape} |
| KV cache per token per layer | {kv} |
| context | {cfg["max_seq_len"]} bytes |
| training tokens | {state["tokens"] / 1e6:.1f}M bytes ({state["step"]} steps) |
| training time | {hours:.2f} h on {hardware} |
| corpus | the Python {python} standard library `.py` files, without site-packages |
| held-out split | 2% of the files, chosen by the sha256 of their relative path |

## Held-out quality

Bits per byte on the whole held-out split ({result["files"]} files, {result["bytes"]:,} bytes), teacher forcing,
windows of {cfg["max_seq_len"]} bytes with stride {cfg["max_seq_len"] // 2}:

| | bits per byte |
|---|---|
| **{name}** | **{result["bits_per_byte"]:.4f}** |
| gzip -9 (all held-out files concatenated) | {result["gzip_bits_per_byte"]:.4f} |
| xz -9e (all held-out files concatenated) | {result["xz_bits_per_byte"]:.4f} |
| gzip -9 (each file compressed alone) | {result["gzip_per_file_bits_per_byte"]:.4f} |
| xz -9 (each file compressed alone) | {result["xz_per_file_bits_per_byte"]:.4f} |

The model scores each file on its own (from BOS), so "each file alone" is the like-for-like comparison;
the concatenated figures are stricter (the compressors share statistics across files).

Reproduce: `omnicoder-eval --model default --heldout`

## Training

```
{command}
python -m omnicoder.model_card --run RUN_DIR --out omnicoder/models/{name}
```

| step | tokens | train bits/byte (batch) | held-out bits/byte (64 KiB sample) |
|---|---|---|---|
{history}

Training is resumable: running the same command again continues from `RUN_DIR/checkpoint`.
The retention head is untrained in this version (its logits are not yet used by any runtime).
"""


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m omnicoder.model_card", description=__doc__)
    p.add_argument("--run", required=True, help="a finished omnicoder-train run directory")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--command", default="", help="the training command, for the card")
    p.add_argument("--hardware", default="2 CPU cores (x86_64, AVX2), no GPU")
    args = p.parse_args(argv)
    run = Path(args.run)
    state_path = run / "checkpoint" / "trainer_state.json"
    if not (run / "model" / "model.safetensors").is_file() or not state_path.is_file():
        raise OmniCoderError(f"{run} is not a finished run (no model/ or checkpoint/); finish training first")
    from omnicoder.data import find_corpus, read_documents
    from omnicoder.evaluate import bits_per_byte, compressor_bits_per_byte
    from omnicoder.weights import load_model, save_model

    state = json.loads(state_path.read_text())
    model = load_model(run / "model")
    docs = read_documents(find_corpus().heldout)
    result = {**bits_per_byte(model, docs, progress=True), **compressor_bits_per_byte(docs), "files": len(docs)}
    name = model.config.name
    card = render_card(name, model.num_parameters(), state, result, args.command or "(not recorded)", args.hardware)
    save_model(model, args.out, extra_files={"MODEL_CARD.md": card, "eval.json": json.dumps(result, indent=2) + "\n"})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
