"""Side-by-side peer benchmark on the same random-weight Llama-shape models, in one run.

    python benchmarks/compare_peers.py --sizes 20m,110m [--threads 2] [--rounds 3] [--out docs/results]

Per size: a Hugging Face Llama checkpoint (random weights, tokenizer trained here) is built once, then
- ours-int4: `omnicoder-export --model hf:DIR --weights int4`, run by our ONNX runner (GraphBackend over OnnxProgram);
- ours-int4-shared: the same with `--kv-io shared` (KV buffers updated in place by GroupQueryAttention);
- ours-int4-unfused: the same with `--no-fuse` (the converter's graph: separate q/k/v and gate/up linears,
  Add + RMSNorm, BNSH attention with layout ops), to show what export/onnx_fusions.py is worth;
- genai-int4: onnxruntime-genai's model builder (`-p int4 -e cpu`), run by its own generator API;
- optimum-fp32 / optimum-int8: optimum-onnx's export (+ its dynamic int8 quantizer), run by a plain ORT loop;
- pytorch-eager: transformers' model with its KV cache;
- executorch-8da4w: `omnicoder-export --target executorch --weights 8da4w` when that works (else n/a).
Peers whose pins clash with ours run in their own venv (build/peer-venv, made here on first use). Every engine
runs in its own worker process; engines are interleaved over `--rounds` rounds and the median is kept, since
timings on a shared machine drift; ratios to onnxruntime-genai are the median of per-round ratios (each engine
against the genai run of the same round). Writes DIR/compare_peers.{json,png}.

The real model is a size too: `--sizes smollm2-135m [--heldout DIR]` measures SmolLM2-135M-Instruct (its GGUF)
with ours-fp32 / ours-int4, genai-int4 and llama.cpp (Q4_1 as shipped, Q4_0), adding bits per byte, bundle MB and
peak RSS columns (peers_real.py; llama.cpp is built on first use into --work/llama.cpp, ~15-30 min on 2 cores).
Writes DIR/compare_peers_smollm2-135m.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
PEER_PINS = [
    "torch==2.13.0",
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "onnxruntime-genai==0.15.2",
    "optimum==2.1.0",
    "optimum-onnx==0.1.0",
    "numpy",
    "tqdm",
]
# name -> Llama shape (vocab 32000, untied LM head, like Llama 2)
SIZES = {
    "20m": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=768),
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048),
    "300m": dict(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
                 intermediate_size=2816),
}  # fmt: skip
ENGINES = [
    "ours-int4",
    "ours-int4-shared",
    "ours-int4-unfused",
    "genai-int4",
    "optimum-fp32",
    "optimum-int8",
    "pytorch-eager",
]
ENGINES_ET = "executorch-8da4w"
GOAL = 1.1  # the bar: our int4 decode tok/s over onnxruntime-genai's


# ---- workers: one engine, timed the same way (run as `compare_peers.py --worker ENGINE ...`) ----------------


def time_engine(reset, prefill, decode, prompt: list[int], steps: int, repeats: int) -> dict:
    """Median prefill tok/s of the prompt, and median decode tok/s over `steps` greedy single-token steps."""
    reset()
    token = prefill(prompt)  # warm-up
    for i in range(3):
        token = decode(token, len(prompt) + i)
    prefills, steps_s = [], []
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        token = prefill(prompt)
        prefills.append(len(prompt) / (time.perf_counter() - start))
        for i in range(steps):
            start = time.perf_counter()
            token = decode(token, len(prompt) + i)
            steps_s.append(time.perf_counter() - start)
    return {"prefill_tok_s": statistics.median(prefills), "decode_tok_s": 1 / statistics.median(steps_s)}


def worker_ours(path: str, threads: int):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(path)
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads)))
    return (
        backend.reset,
        lambda ids: int(np.argmax(backend.step(ids, list(range(len(ids)))))),
        lambda tok, pos: int(np.argmax(backend.step([tok], [pos]))),
    )


def worker_executorch(path: str, threads: int):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.executorch_session import create_backend

    backend = create_backend(open_bundle(path), threads)
    return (
        backend.reset,
        lambda ids: int(np.argmax(backend.step(ids, list(range(len(ids)))))),
        lambda tok, pos: int(np.argmax(backend.step([tok], [pos]))),
    )


def worker_genai(path: str, threads: int, max_length: int = 1024):
    import onnxruntime_genai as og

    model = og.Model(path)
    state = {}

    def reset():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        state["gen"] = og.Generator(model, params)

    def prefill(ids):  # the prompt's forward pass, then the pick of the first token (as the others do)
        state["gen"].append_tokens(ids)
        state["gen"].generate_next_token()
        return 0

    def decode(tok, pos):
        state["gen"].generate_next_token()
        return 0

    return reset, prefill, decode


def worker_optimum(path: str, threads: int):
    """A plain onnxruntime loop over optimum's decoder (input_ids, attention_mask, position_ids, past_key_values)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model_file = next(p for p in sorted(Path(path).glob("*.onnx")))
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values")]
    outputs = [o.name for o in session.get_outputs()]
    state = {}

    def reset():
        state["past"] = {n: np.zeros((1, inputs[n].shape[1], 0, inputs[n].shape[3]), np.float32) for n in past_names}
        state["len"] = 0

    def run(ids: list[int]) -> int:
        total = state["len"] + len(ids)
        feed = {"input_ids": np.array([ids], np.int64), **state["past"]}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones((1, total), np.int64)
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(state["len"], total, dtype=np.int64)[None]
        values = dict(zip(outputs, session.run(outputs, feed), strict=True))
        state["past"] = {n: values[n.replace("past_key_values", "present")] for n in past_names}
        state["len"] = total
        return int(np.argmax(values["logits"][0, -1]))

    return reset, run, lambda tok, pos: run([tok])


def worker_eager(path: str, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    state = {}

    @torch.no_grad()
    def run(ids: list[int]) -> int:
        out = model(torch.tensor([ids]), past_key_values=state["cache"], use_cache=True)
        return int(out.logits[0, -1].argmax())

    return (lambda: state.update(cache=DynamicCache())), run, lambda tok, pos: run([tok])


WORKERS = {
    "ours": worker_ours,
    "executorch": worker_executorch,
    "genai": worker_genai,
    "optimum": worker_optimum,
    "eager": worker_eager,
}


def logits_ours(path: str, threads: int):
    """Teacher-forcing logits [W, V] of one window through our runner (empty cache)."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(path)
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads)))
    return lambda ids: backend.full_logits(np.array([ids], np.int64))[0]


def logits_genai(path: str, threads: int):
    """Teacher-forcing logits of onnxruntime-genai's model.onnx, run by plain onnxruntime (empty past)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(Path(path) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32}
    decoder = json.loads((Path(path) / "genai_config.json").read_text())["model"]["decoder"]
    kv_shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])  # BNSH, empty past
    empty = {n: np.zeros(kv_shape, dtypes[s.type]) for n, s in inputs.items() if n.startswith("past_key_values")}

    def logits(ids: list[int]) -> np.ndarray:
        feed = {"input_ids": np.array([ids], np.int64), **empty}
        mask = inputs["attention_mask"]
        feed["attention_mask"] = np.ones((1, len(ids)), dtypes.get(mask.type, np.int64))
        return session.run(["logits"], feed)[0][0].astype(np.float32)

    return logits


LOGITS = {"ours": logits_ours, "genai": logits_genai}


def worker_main(args) -> None:
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.task == "bpb":  # every plan's bits per byte (peers_bpb.py)
        import peers_bpb

        logits = LOGITS[args.worker](args.path, args.threads)
        result = {}
        for plan_file in args.plans:
            plan = json.loads(Path(plan_file).read_text())
            result[plan["name"]] = peers_bpb.score_plan(logits, plan, progress=True)
        print("RESULT " + json.dumps(result), flush=True)
        return
    make = WORKERS[args.worker]
    if args.worker == "genai":  # genai sizes its KV buffers by max_length
        make = functools.partial(make, max_length=args.prompt_tokens + args.decode_steps + 16)
    reset, prefill, decode = make(args.path, args.threads)
    if args.prompt_ids:
        prompt = json.loads(Path(args.prompt_ids).read_text())[: args.prompt_tokens]
    else:
        prompt = np.random.default_rng(0).integers(3, args.vocab, args.prompt_tokens).tolist()
    if args.task == "rss":  # one greedy generation of decode_steps tokens; the driver reads this process's peak RSS
        reset()
        token = prefill(prompt)
        for i in range(args.decode_steps - 1):
            token = decode(token, len(prompt) + i)
        print("RESULT {}", flush=True)
        return
    result = time_engine(reset, prefill, decode, prompt, args.decode_steps, args.repeats)
    print("RESULT " + json.dumps(result), flush=True)


# ---- driver ----------------------------------------------------------------------------------------------


def run_logged(cmd: list[str], log: Path, **kwargs) -> str:
    """Run a command, appending its output to `log`; raise with the log's tail when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def ensure_peer_venv(venv: Path, log: Path) -> Path:
    """The peers' venv (made on first use: our pins plus onnxruntime-genai and optimum-onnx)."""
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import onnxruntime_genai, optimum.onnxruntime"]).returncode == 0
    ):
        return python
    print(f"making the peers' venv at {venv} (a few minutes)", flush=True)
    run_logged([sys.executable, "-m", "venv", str(venv)], log)
    run_logged([str(venv / "bin" / "pip"), "install", "-q", *PEER_PINS], log)
    return python


def build_hf_model(size: str, out: Path) -> int:
    """A random-weight Llama checkpoint + a tokenizer trained here (no hub); returns its parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=32000, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        **SIZES[size],
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    if not (out / "config.json").is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"])
        tok.train_from_iterator([Path(__file__).read_text()], trainer)
        model.save_pretrained(out)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(out)
    return model.num_parameters()


def export_ours(hf_dir: Path, out: Path, fuse: bool = True, kv_io: str = "present") -> None:
    """`omnicoder-export --model hf:DIR --weights int4 [--no-fuse] [--kv-io shared]`."""
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle

    from omnicoder.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(f"hf:{hf_dir}")
    options = OnnxExportOptions(weights="int4", fuse=fuse, kv_io=kv_io)
    export_onnx_bundle(model, tokenizer.to_json(), out, options)


def export_executorch(hf_dir: Path, out: Path, log: Path) -> None:
    """`omnicoder-export --target executorch --weights 8da4w`; a failure leaves the column n/a (logged)."""
    cmd = [sys.executable, "-m", "omnicoder.export.cli", "--target", "executorch", "--weights", "8da4w"]
    try:
        run_logged([*cmd, "--model", f"hf:{hf_dir}", "--max-seq-len", "512", "--out", str(out)], log)
    except RuntimeError as exc:
        print(f"executorch export failed, column n/a: {str(exc).splitlines()[0]} (see {log})", flush=True)


PEER_EXPORT = """
import sys
kind, hf_dir, out = sys.argv[1:4]
if kind == "optimum-fp32":
    from optimum.exporters.onnx import main_export
    main_export(hf_dir, output=out, task="text-generation-with-past", do_validation=False)
else:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    q = ORTQuantizer.from_pretrained(hf_dir)
    q.quantize(save_dir=out, quantization_config=AutoQuantizationConfig.avx2(is_static=False, per_channel=True))
"""


def build_artifacts(
    size: str, work: Path, peer: Path, threads: int, log: Path, with_et: bool, only: set[str] | None = None
) -> dict:
    """Export every engine's artifact once (kept in `work` for re-runs); returns engine -> (worker, path, venv)."""
    hf_dir = work / "hf"
    ours, ours_lm, genai = work / "ours-int4", work / "ours-int4-unfused", work / "genai-int4"
    ours_shared = work / "ours-int4-shared"
    opt32, opt8 = work / "optimum-fp32", work / "optimum-int8"
    steps = [
        (ours, lambda: export_ours(hf_dir, ours, fuse=True)),
        (ours_shared, lambda: export_ours(hf_dir, ours_shared, kv_io="shared")),
        (ours_lm, lambda: export_ours(hf_dir, ours_lm, fuse=False)),
        (genai, lambda: run_logged([str(peer), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                                    "-o", str(genai), "-p", "int4", "-e", "cpu"], log)),
        (opt32, lambda: run_logged([str(peer), "-c", PEER_EXPORT, "optimum-fp32", str(hf_dir), str(opt32)], log)),
        (opt8, lambda: run_logged([str(peer), "-c", PEER_EXPORT, "optimum-int8", str(opt32), str(opt8)], log)),
    ]  # fmt: skip
    if with_et:
        steps.append((work / ENGINES_ET, lambda: export_executorch(hf_dir, work / ENGINES_ET, log)))
    if only:  # --engines: build only what is timed
        steps = [(path, make) for path, make in steps if path.name in only]
    seconds = {}
    for path, make in tqdm(steps, desc=f"{size}: export", unit="engine"):
        if path in (ours, ours_shared, ours_lm):  # our exporter is what is under test: never reuse an old export
            shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            start = time.perf_counter()
            make()
            seconds[path.name] = round(time.perf_counter() - start, 1)
    genai_config = genai / "genai_config.json"  # same thread count as every other engine
    document = json.loads(genai_config.read_text())
    document["model"]["decoder"]["session_options"].update(intra_op_num_threads=threads, inter_op_num_threads=1)
    genai_config.write_text(json.dumps(document, indent=2))
    engines = {
        "ours-int4": ("ours", ours, sys.executable),
        "ours-int4-shared": ("ours", ours_shared, sys.executable),
        "ours-int4-unfused": ("ours", ours_lm, sys.executable),
        "genai-int4": ("genai", genai, str(peer)),
        "optimum-fp32": ("optimum", opt32, str(peer)),
        "optimum-int8": ("optimum", opt8, str(peer)),
        "pytorch-eager": ("eager", hf_dir, sys.executable),
    }
    if with_et and (work / ENGINES_ET).exists():
        engines[ENGINES_ET] = ("executorch", work / ENGINES_ET, sys.executable)
    if only:
        engines = {name: engine for name, engine in engines.items() if name in only}
    return {"engines": engines, "export_seconds": seconds}


def artifact_bytes(path: Path, engine: str) -> int | None:
    if engine == "pytorch-eager":
        files = list(path.glob("*.safetensors"))
    else:
        files = [p for p in path.rglob("*") if p.suffix in (".onnx", ".data", ".onnx_data", ".pte")]
    return sum(p.stat().st_size for p in files) or None


def run_size(size: str, args, peer: Path, log: Path) -> dict:
    work = Path(args.work) / size
    work.mkdir(parents=True, exist_ok=True)
    parameters = build_hf_model(size, work / "hf")
    only = set(args.engines.split(",")) if args.engines else None
    built = build_artifacts(size, work, peer, args.threads, log, not args.no_executorch, only)
    engines = built["engines"]
    samples: dict[str, list[dict]] = {name: [] for name in engines}
    common = ["--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens)]
    common += ["--decode-steps", str(args.decode_steps), "--repeats", str(args.repeats), "--vocab", "32000"]
    bar = tqdm(total=args.rounds * len(engines), desc=f"{size}: timing", unit="run")
    for _ in range(args.rounds):
        for name, (worker, path, python) in engines.items():
            bar.set_postfix_str(name)
            cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--path", str(path), *common]
            out = run_logged(cmd, log, cwd=ROOT)
            samples[name].append(json.loads(out.split("RESULT ", 1)[1]))
            bar.update(1)
    bar.close()
    rows = {}
    for name in ENGINES + [ENGINES_ET]:
        if name not in engines:
            note = "n/a (not available)"
            if only and name not in only:
                note = "n/a (not run: --engines)"
            elif name == ENGINES_ET and args.no_executorch:
                note = "n/a (not run: --no-executorch)"
            rows[name] = {"available": False, "note": note}
            continue
        rows[name] = {
            "available": True,
            "prefill_tok_s": round(statistics.median(s["prefill_tok_s"] for s in samples[name]), 1),
            "decode_tok_s": round(statistics.median(s["decode_tok_s"] for s in samples[name]), 1),
            "decode_rounds": [round(s["decode_tok_s"], 1) for s in samples[name]],
            "bytes": artifact_bytes(engines[name][1], name),
        }
        for kind in ("decode", "prefill"):  # paired per round (genai ran moments apart), then the median
            key = f"{kind}_tok_s"
            pairs = zip(samples[name], samples["genai-int4"], strict=True)
            rows[name][f"{kind}_vs_genai"] = round(statistics.median(a[key] / b[key] for a, b in pairs), 2)
    return {"parameters": parameters, "shape": SIZES[size], "export_seconds": built["export_seconds"], "rows": rows}


def report(results: dict) -> None:
    for size, entry in results["sizes"].items():
        print(f"\n{size} ({entry['parameters'] / 1e6:.1f}M parameters, {results['threads']} threads)")
        print(f"{'engine':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'MB':>8s} {'decode/genai':>13s}")
        for name, row in entry["rows"].items():
            if not row["available"]:
                print(f"{name:20s} {row['note']}")
                continue
            mb = f"{row['bytes'] / 1e6:.1f}" if row["bytes"] else "-"
            print(
                f"{name:20s} {row['prefill_tok_s']:14.1f} {row['decode_tok_s']:13.1f} {mb:>8s} "
                f"{row['decode_vs_genai']:12.2f}x"
            )
        rows = entry["rows"].items()
        ours = {name: row["decode_vs_genai"] for name, row in rows if name.startswith("ours") and row["available"]}
        if ours:
            best = max(ours, key=ours.get)
            verdict = "met" if ours[best] >= GOAL else "not met"
            print(f"goal (our int4 decode >= {GOAL}x genai): best {best} {ours[best]:.2f}x, {verdict}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        rows = {k: v for k, v in results["sizes"][size]["rows"].items() if v["available"]}
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["decode_tok_s"] for r in rows.values()], 0.4, label="decode tok/s")
        ax.bar(x + 0.2, [r["prefill_tok_s"] / 10 for r in rows.values()], 0.4, label="prefill tok/s / 10", alpha=0.6)
        if "genai-int4" in rows:  # the goal: our int4 decode >= 1.1x onnxruntime-genai's
            goal = GOAL * rows["genai-int4"]["decode_tok_s"]
            ax.axhline(goal, color="crimson", linestyle="--", linewidth=1, label=f"goal: {GOAL}x genai decode")
        ax.set_xticks(x, list(rows), rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{size}: {results['sizes'][size]['parameters'] / 1e6:.0f}M params, {results['threads']} threads")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20m,110m", help=f"comma-separated: {', '.join(SIZES)}, smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats inside one worker run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all engines (median kept)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--work", default="build/peers", help="models and artifacts (reused when present)")
    p.add_argument("--peer-venv", default="build/peer-venv")
    p.add_argument("--no-executorch", action="store_true", help="skip the ExecuTorch 8da4w column")
    p.add_argument("--engines", default="", help="comma-separated subset to build and time (genai-int4 is always in)")
    p.add_argument("--heldout", default="/tmp/heldout", help="real models: folder of held-out text files")
    p.add_argument("--score-window", type=int, default=512, help="real models: tokens per scored window")
    p.add_argument("--score-threads", type=int, default=2, help="real models: threads for bits per byte")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=32000, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("time", "rss", "bpb"), default="time", help=argparse.SUPPRESS)
    p.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    p.add_argument("--plans", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    import peers_real

    choices = [*SIZES, *peers_real.REAL_SIZES]
    unknown = [s for s in args.sizes.split(",") if s not in choices]
    if unknown:
        p.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    if args.engines:
        wrong = [e for e in args.engines.split(",") if e not in [*ENGINES, ENGINES_ET]]
        if wrong:
            p.error(f"unknown engine(s) {', '.join(wrong)}; choose from {', '.join([*ENGINES, ENGINES_ET])}")
        args.engines = ",".join(dict.fromkeys(["genai-int4", *args.engines.split(",")]))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    log = Path(args.work) / "compare_peers.log"
    peer = ensure_peer_venv(Path(args.peer_venv).resolve(), log)
    results = {
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_steps": args.decode_steps,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "command": "python benchmarks/compare_peers.py " + " ".join(sys.argv[1:]),
        "sizes": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for size in [s for s in args.sizes.split(",") if s in peers_real.REAL_SIZES]:  # own file and table
        entry = peers_real.run_real_size(size, args, peer, log)
        document = {key: value for key, value in results.items() if key != "sizes"} | entry
        (out / f"compare_peers_{size}.json").write_text(json.dumps(document, indent=2) + "\n")
        peers_real.report(size, entry, args.threads)
    for size in [s for s in args.sizes.split(",") if s in SIZES]:
        results["sizes"][size] = run_size(size, args, peer, log)
    if not results["sizes"]:
        return
    (out / "compare_peers.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        plot(results, out / "compare_peers.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'omnicoder[bench]')")
    report(results)


if __name__ == "__main__":
    main()
