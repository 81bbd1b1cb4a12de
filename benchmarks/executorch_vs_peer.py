"""Decode speed of our ExecuTorch export vs ExecuTorch's own LLM export (`export_llm`) of the same Llama shape.

    python benchmarks/executorch_vs_peer.py [--dim 512 --layers 6 --heads 8 --kv-heads 2 --ffn 1536 --vocab 8192]
        [--weights fp32,8da4w] [--threads 1] [--rounds 5] [--decode-steps 128] [--out docs/results]

The shape is a transformers `LlamaConfig` built here (nothing is downloaded). The peer is ExecuTorch's own LLM
export path (`executorch.examples.models.llama.export_llama_lib.export_llama`, what `export_llm` runs) of that
shape with random weights (no checkpoint): XNNPACK, KV cache in the program, `llama::custom_sdpa` /
`llama::update_cache`, dynamic shapes, and torchao 8da4w (group 32) for the quantized variant. Ours is
`omnicoder-export --target executorch` of an OmniCoder GQA config with the same dims (untied LM head like the
peer; random weights). Both .pte files run in the same process with the same ExecuTorch Python runtime and
the same loop: a prefill, then single-token steps, rounds alternating between the programs; the table gives
median decode tok/s and the ratio. A third program, ours with `attention="reference"` (slice-assignment KV update +
decomposed SDPA instead of the fused llama:: ops), measures what the fused ops buy. Writes
DIR/executorch_vs_peer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def llama_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.dim,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )


def export_peer(hf, weights: str, out_dir: Path, max_seq_len: int) -> Path:
    """ExecuTorch's own LLM export of the shape (random init: no checkpoint)."""
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    params = out_dir / "params.json"
    params.write_text(
        json.dumps(
            {
                "dim": hf.hidden_size,
                "n_layers": hf.num_hidden_layers,
                "n_heads": hf.num_attention_heads,
                "n_kv_heads": hf.num_key_value_heads,
                "vocab_size": hf.vocab_size,
                "hidden_dim": hf.intermediate_size,
                "norm_eps": hf.rms_norm_eps,
                "rope_theta": hf.rope_theta,
                "use_scaled_rope": False,
            }
        )
    )
    config = LlmConfig()
    config.base.params = str(params)
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True
    config.model.enable_dynamic_shape = True
    config.export.max_seq_length = max_seq_len
    config.export.max_context_length = max_seq_len
    config.export.output_dir = str(out_dir)
    config.export.output_name = f"peer-{weights}"  # export_llama adds .pte (a name ending in .pte ignores the dir)
    config.backend.xnnpack.enabled = True
    config.backend.xnnpack.extended_ops = True  # as in export_llm's documented XNNPACK recipe
    if weights == "8da4w":
        config.quantization.qmode = "8da4w"
        config.quantization.group_size = 32
    export_llama(config)
    return out_dir / f"peer-{weights}.pte"


def export_ours(hf, weights: str, out_dir: Path, max_seq_len: int, attention: str = "fused") -> tuple[Path, dict]:
    from omnicoder.export.executorch_export import ExecuTorchExportOptions, export_executorch_bundle

    from omnicoder.config import OmniCoderConfig
    from omnicoder.model import OmniCoder
    from omnicoder.tokenizer import ByteTokenizer

    config = OmniCoderConfig(
        name="llama-shape",
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=hf.num_key_value_heads,
        head_dim=hf.hidden_size // hf.num_attention_heads,
        mlp_hidden=hf.intermediate_size,
        max_seq_len=max_seq_len,
        tie_embeddings=False,
        rope_theta=hf.rope_theta,
    )
    model = OmniCoder(config).eval()
    bundle = out_dir / f"ours-{weights}-{attention}"
    options = ExecuTorchExportOptions(weights, attention=attention)
    manifest = export_executorch_bundle(model, ByteTokenizer().to_json(), bundle, options)
    return bundle / "model.pte", manifest["graph"]["executorch"]


def program_profile(path: Path) -> dict:
    """Per forward call: XNNPACK delegate calls and the kernels ExecuTorch runs outside the delegates."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    program = deserialize_pte_binary(path.read_bytes())
    program = getattr(program, "program", program)
    plan = next(p for p in program.execution_plan if p.name == "forward")
    kernels, delegates = Counter(), 0
    for instruction in plan.chains[0].instructions:
        args = instruction.instr_args
        if isinstance(args, DelegateCall):
            delegates += 1
        elif isinstance(args, KernelCall):
            op = plan.operators[args.op_index]
            kernels[op.name + (f".{op.overload}" if op.overload else "")] += 1
    return {
        "delegate_calls": delegates,
        "kernel_calls": sum(kernels.values()),
        "kernels": dict(sorted(kernels.items())),
    }


def decode_rate(method, vocab: int, prefill: int, steps: int) -> float:
    """Prefill `prefill` tokens at position 0, then time `steps` single-token calls; returns tokens/s."""
    import torch

    ids = torch.randint(0, vocab, (1, prefill), generator=torch.Generator().manual_seed(0))
    method.execute([ids, torch.tensor([0])])
    token = torch.tensor([[1]])
    start = time.perf_counter()
    for pos in range(prefill, prefill + steps):
        method.execute([token, torch.tensor([pos])])
    return steps / (time.perf_counter() - start)


def time_programs(programs: dict, args, vocab: int) -> tuple[dict, dict]:
    """Decode tok/s of each program over alternating rounds: (median per program, every round)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(args.threads)
    runtime = Runtime.get()
    methods = {name: runtime.load_program(str(path)).load_method("forward") for name, path in programs.items()}
    rates = {name: [] for name in methods}
    for r in range(args.rounds):
        for name in list(methods) if r % 2 == 0 else list(methods)[::-1]:
            rates[name].append(decode_rate(methods[name], vocab, args.prefill, args.decode_steps))
    return {name: statistics.median(values) for name, values in rates.items()}, rates


def default_model_row(args, out: Path) -> dict:
    """The shipped MLA model: fused (V = whole latent row in custom_sdpa) vs decomposed attention."""
    from omnicoder.export.executorch_export import ExecuTorchExportOptions, export_executorch_bundle

    from omnicoder.loading import load_model_and_tokenizer

    programs = {}
    for attention in ("fused", "reference"):
        model, tokenizer = load_model_and_tokenizer("default")
        bundle = out / f"default-{attention}"
        export_executorch_bundle(model, tokenizer.to_json(), bundle, ExecuTorchExportOptions(attention=attention))
        programs[attention] = bundle / "model.pte"
    median, rates = time_programs(programs, args, model.config.vocab_size)
    print(f"default model (MLA, fp32) decode tok/s: fused {median['fused']:.1f}, decomposed {median['reference']:.1f}")
    return {
        "decode_tok_s": {name: round(v, 1) for name, v in median.items()},
        "fused_over_reference": round(median["fused"] / median["reference"], 3),
        "rounds": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "program": {name: program_profile(path) for name, path in programs.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--weights", default="fp32,8da4w")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prefill", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=128)
    p.add_argument("--default-model", action="store_true", help="also time the default (MLA) model, fused vs not")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()

    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401

    hf = llama_config(args)
    rows, extra = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.default_model:
            extra["default_model_mla"] = default_model_row(args, Path(tmp))
        for weights in [w for w in args.weights.split(",") if w]:
            out = Path(tmp) / weights
            out.mkdir()
            programs, seconds, info = {}, {}, {}
            started = time.perf_counter()
            programs["peer"] = export_peer(hf, weights, out, args.max_seq_len)
            seconds["peer"] = round(time.perf_counter() - started, 1)
            for attention in ("fused", "reference"):
                started = time.perf_counter()
                name = "ours" if attention == "fused" else "ours-reference"
                programs[name], info[name] = export_ours(hf, weights, out, args.max_seq_len, attention)
                seconds[name] = round(time.perf_counter() - started, 1)
            median, rates = time_programs(programs, args, args.vocab)
            rows[weights] = {
                "decode_tok_s": {name: round(v, 1) for name, v in median.items()},
                "ours_over_peer": round(median["ours"] / median["peer"], 3),
                "fused_over_reference": round(median["ours"] / median["ours-reference"], 3),
                "rounds": {name: [round(v, 1) for v in values] for name, values in rates.items()},
                "pte_bytes": {name: path.stat().st_size for name, path in programs.items()},
                "export_seconds": seconds,
                "program": {name: program_profile(path) for name, path in programs.items()},
                "ours_delegation": {
                    name: {k: i[k] for k in ("delegated_nodes", "non_delegated_nodes", "non_delegated_ops")}
                    for name, i in info.items()
                },
            }
            print(
                f"{weights:6s} decode tok/s: peer (export_llm) {median['peer']:.1f}, ours {median['ours']:.1f} "
                f"(x{median['ours'] / median['peer']:.2f}), ours with decomposed attention "
                f"{median['ours-reference']:.1f}"
            )
    result = {
        "shape": {k: getattr(args, k) for k in ("dim", "layers", "heads", "kv_heads", "ffn", "vocab", "max_seq_len")},
        "threads": args.threads,
        "prefill": args.prefill,
        "decode_steps": args.decode_steps,
        "rows": rows,
        **extra,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "executorch_vs_peer.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
