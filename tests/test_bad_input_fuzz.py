"""Bad input never costs a user data, memory or a traceback (docs/bad_input.md).

Hypothesis fuzzing of every console script that reads a bundle, a sidecar, a profile, a prompt or a model
directory, and of `omnicoder-export --out`: mutated manifests and sidecars, flipped and truncated files
(re-hashed or not), hostile numbers and strings in files and flags. Each input must end in exit 0, an expected
exit 1, or exit 2 with one line on stderr; never a traceback, never a hang (an alarm), never a write a real
terminal would refuse, never a user's file lost, and the process' peak memory stays bounded.

The default run is sized for `make test`; `pytest -m slow tests/test_bad_input_fuzz.py -s` runs thousands of
cases and prints the totals per family.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omnicoder.export import cli as export_cli
from omnicoder.runtimes import (
    executorch_generate,
    kv_budget_enforce,
    mobile_budget_check,
    onnx_decode_generate,
    package_app_assets,
    provider_bench,
)

from omnicoder.cli import evaluate, generate

from .fuzz_support import (
    TOTALS,
    dumps,
    flag_values,
    mutated_bytes,
    mutated_json,
    record,
    rehash,
    report_totals,
    run_tool,
)

GOOD = Path(__file__).resolve().parent / "vectors" / "bundles" / "good"
FAMILIES = ["manifest", "sidecars", "tokenizer", "bytes", "flags", "profiles", "prompts", "model-dir", "export-out"]
# examples per family: (default run, slow run)
SIZES = {
    "manifest": (100, 800),
    "sidecars": (80, 600),
    "tokenizer": (40, 300),
    "bytes": (80, 700),
    "flags": (150, 1500),
    "profiles": (60, 500),
    "prompts": (40, 300),
    "model-dir": (40, 300),
    "export-out": (80, 600),
}
MANIFEST_FOCUS = [
    ("target",),
    ("model", "n_layers"),
    ("model", "n_heads"),
    ("model", "n_kv_heads"),
    ("model", "head_dim"),
    ("model", "kv_latent_dim"),
    ("model", "vocab_size"),
    ("model", "context_length"),
    ("model", "bos_id"),
    ("model", "eos_id"),
    ("model", "n_mtp"),
    ("model", "attention"),
    ("model", "retention_head"),
    ("precision", "kv"),
    ("graph", "file"),
    ("graph", "inputs"),
    ("graph", "kv", "heads"),
    ("graph", "kv", "key_dim"),
    ("graph", "kv", "value_dim"),
    ("graph", "kv", "past_key"),
    ("graph", "kv", "present_value"),
    ("graph", "kv", "io"),
    ("graph", "kv", "storage"),
    ("graph", "kv", "storage", "dtype"),
    ("tokenizer", "file"),
    ("tokenizer", "type"),
    ("sidecars", "kv_paging"),
    ("files",),
]
PAGING_FOCUS = [
    ("page_len",),
    ("n_layers",),
    ("heads",),
    ("dl",),
    ("key_dim",),
    ("value_dim",),
    ("kv_dtype",),
    ("bytes_per_token_per_layer",),
    ("context_length",),
    ("spill_bytes",),
    ("rope_dim",),
]
RETENTION_FOCUS = [("budget_bytes",), ("sink_tokens",), ("recent_window",), ("recent_fraction",), ("compress",)]
BUNDLES = ["gqa-fp32", "mla-int4-mnb", "gqa-u8"]
NUMERIC_FLAGS = {
    "onnx-generate": [
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--threads",
        "--window",
        "--sink-pages",
        "--predicted-pages",
        "--kv-ram-budget-mb",
        "--page-len",
        "--kv-budget-mb",
        "--speculative",
        "--score-window",
    ],
    "kv-budget": ["--budget-mb", "--context"],
    "mobile-check": ["--context"],
    "export": ["--opset", "--page-len", "--context", "--max-seq-len", "--kv-group"],
    "generate": ["--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--threads", "--speculative"],
    "eval": ["--window", "--max-bytes", "--threads"],
}


def sized(family: str, slow: bool):
    examples = SIZES[family][1 if slow else 0]
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=60),
        suppress_health_check=list(HealthCheck),
        derandomize=not slow,
        database=None,
    )


@dataclass
class Env:
    root: Path
    apps: Path
    thresholds: Path
    score_file: Path
    model_dir: Path
    bundles: dict[str, Path]


@pytest.fixture(scope="module")
def env(bundles, tmp_path_factory) -> Env:
    import torch

    from omnicoder.model import OmniCoder
    from omnicoder.presets import gqa_test_config
    from omnicoder.weights import save_model

    root = tmp_path_factory.mktemp("fuzz")
    apps = root / "apps"
    (apps / "android-app/app").mkdir(parents=True)
    (apps / "android-app/app/build.gradle.kts").write_text("// android\n")
    (apps / "ios-app/OmniCoderChat.xcodeproj").mkdir(parents=True)
    thresholds = root / "thresholds.json"
    profile = {
        "description": "fuzz",
        "measured": False,
        "source": "tests",
        "bench": {"threads": 1, "prefill_tokens": 2, "decode_steps": 1, "repeats": 1, "warmup_steps": 0},
        "providers": {"CPUExecutionProvider": {"fused_attention": False, "quantized_matmul": False}},
    }
    document = {"format": "omnicoder-provider-thresholds", "format_version": 1, "profiles": {"fuzz": profile}}
    thresholds.write_text(json.dumps(document))
    score_file = root / "score.py"
    score_file.write_text("def f(x):\n    return x + 1\n")
    torch.manual_seed(0)
    model_dir = save_model(OmniCoder(gqa_test_config()).eval(), root / "model")
    return Env(root, apps, thresholds, score_file, model_dir, {name: bundles[name][2] for name in BUNDLES})


@contextmanager
def scratch(env: Env):
    path = Path(tempfile.mkdtemp(dir=env.root, prefix="case-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bundle_tools(env: Env, bundle: Path, work: Path, bench: bool) -> list[tuple[str, object, list[str], bool]]:
    """(name, main, argv, exit 1 allowed) of every tool that reads a bundle."""
    b = str(bundle)
    tools = [
        ("kv-budget", kv_budget_enforce.main, ["--bundle", b, "--budget-mb", "0.05", "--json"], True),
        ("mobile-check", mobile_budget_check.main, ["--bundle", b, "--device", "ci-cpu"], True),
        (
            "onnx-generate",
            onnx_decode_generate.main,
            ["--bundle", b, "--prompt", "def f(", "--max-new-tokens", "3", "--temperature", "0", "--threads", "1"],
            False,
        ),
        (
            "onnx-score",
            onnx_decode_generate.main,
            ["--bundle", b, "--score", str(env.score_file), "--score-window", "16", "--threads", "1"],
            False,
        ),
        ("package-app-assets", package_app_assets.main, ["--bundle", b, "--apps-root", str(env.apps)], False),
        ("executorch-generate", executorch_generate.main, ["--bundle", b, "--prompt", "x"], False),
    ]
    if bench:
        argv = [
            "--bundle",
            b,
            "--profile",
            "fuzz",
            "--thresholds",
            str(env.thresholds),
            "--out",
            str(work / "bench.json"),
            "--graphs-dir",
            str(work / "graphs"),
        ]
        tools.append(("bench", provider_bench.main, argv, True))
    return tools


def check_bundle_case(family: str, env: Env, bundle: Path, work: Path, bench: bool) -> None:
    for name, main, argv, allow_fail in bundle_tools(env, bundle, work, bench):
        outcome = run_tool(main, argv)
        problems = record(family, outcome, allow_fail)
        assert not problems, f"{name} {argv}: {problems}\n{outcome.error or outcome.stderr[-2000:]}"


def copy_bundle(env: Env, name: str, work: Path) -> Path:
    target = work / "bundle"
    shutil.copytree(env.bundles[name], target)
    return target


# ---- bundle files ----------------------------------------------------------------------------------------------


def manifest_case(env: Env, data, slow: bool) -> None:
    with scratch(env) as work:
        bundle = copy_bundle(env, data.draw(st.sampled_from(BUNDLES)), work)
        manifest = json.loads((bundle / "manifest.json").read_text())
        (bundle / "manifest.json").write_text(dumps(data.draw(mutated_json(manifest, MANIFEST_FOCUS))))
        check_bundle_case("manifest", env, bundle, work, bench=data.draw(st.integers(0, 5)) == 0)


def sidecar_case(env: Env, data, slow: bool) -> None:
    with scratch(env) as work:
        bundle = copy_bundle(env, data.draw(st.sampled_from(BUNDLES)), work)
        name, focus = data.draw(
            st.sampled_from([("model.kv_paging.json", PAGING_FOCUS), ("model.retention.json", RETENTION_FOCUS)])
        )
        document = json.loads((bundle / name).read_text())
        (bundle / name).write_text(dumps(data.draw(mutated_json(document, focus))))
        if data.draw(st.booleans()):
            rehash(bundle)
        check_bundle_case("sidecars", env, bundle, work, bench=data.draw(st.integers(0, 5)) == 0)


def tokenizer_case(env: Env, data, slow: bool) -> None:
    with scratch(env) as work:
        bundle = copy_bundle(env, data.draw(st.sampled_from(BUNDLES)), work)
        text = (bundle / "tokenizer.json").read_bytes()
        if data.draw(st.booleans()):
            mutated = dumps(data.draw(mutated_json(json.loads(text)))).encode()
        else:
            mutated = data.draw(mutated_bytes(text))
        (bundle / "tokenizer.json").write_bytes(mutated)
        if data.draw(st.booleans()):
            rehash(bundle)
        check_bundle_case("tokenizer", env, bundle, work, bench=False)


def bytes_case(env: Env, data, slow: bool) -> None:
    with scratch(env) as work:
        bundle = copy_bundle(env, data.draw(st.sampled_from(BUNDLES)), work)
        files = sorted(p.name for p in bundle.iterdir())
        name = data.draw(st.sampled_from(files))
        (bundle / name).write_bytes(data.draw(mutated_bytes((bundle / name).read_bytes())))
        if data.draw(st.booleans()):
            rehash(bundle)
        check_bundle_case("bytes", env, bundle, work, bench=data.draw(st.integers(0, 5)) == 0)


# ---- flags, profile files, prompts ------------------------------------------------------------------------------


def flag_case(env: Env, data, slow: bool) -> None:
    tool = data.draw(st.sampled_from(sorted(NUMERIC_FLAGS)))
    flag, value = data.draw(st.sampled_from(NUMERIC_FLAGS[tool])), data.draw(flag_values())
    gqa = str(env.bundles["gqa-fp32"])
    with scratch(env) as work:
        base = {
            "onnx-generate": (
                onnx_decode_generate.main,
                ["--bundle", gqa, "--prompt", "x", "--max-new-tokens", "2", "--temperature", "0", "--threads", "1"],
            ),
            "kv-budget": (kv_budget_enforce.main, ["--bundle", gqa, "--budget-mb", "1"]),
            "mobile-check": (mobile_budget_check.main, ["--bundle", gqa, "--device", "ci-cpu"]),
            # a model whose weights do not load: the flags are checked first, and nothing is exported
            "export": (export_cli.main, ["--model", str(work / "none"), "--out", str(work / "out")]),
            "generate": (generate.main, ["--model", str(env.model_dir), "--prompt", "x", "--max-new-tokens", "2"]),
            "eval": (evaluate.main, ["--model", str(env.model_dir), "--files", str(env.score_file)]),
        }[tool]
        main, argv = base
        if flag == "--score-window":
            argv = ["--bundle", gqa, "--score", str(env.score_file), "--threads", "1"]
        if flag in ("--window", "--kv-ram-budget-mb", "--page-len", "--sink-pages", "--predicted-pages"):
            argv = [*argv, "--window", "32"] if flag != "--window" else argv
        if flag == "--kv-budget-mb":
            argv = [*argv, "--retention", "streaming"]
        outcome = run_tool(main, [*argv, flag, value])
        problems = record("flags", outcome, allow_fail=tool in ("kv-budget", "mobile-check"))
        assert not problems, f"{tool} {flag} {value!r}: {problems}\n{outcome.error or outcome.stderr[-2000:]}"


def profile_case(env: Env, data, slow: bool) -> None:
    kind = data.draw(st.sampled_from(["devices", "thresholds"]))
    source = Path(profile_default(kind))
    with scratch(env) as work:
        path = work / "profile.json"
        how = data.draw(st.sampled_from(["json", "json", "bytes", "path"]))
        if how == "json":
            path.write_text(dumps(data.draw(mutated_json(json.loads(source.read_text())))))
        elif how == "bytes":
            path.write_bytes(data.draw(mutated_bytes(source.read_bytes())))
        else:
            path = data.draw(
                st.sampled_from(
                    [
                        work,
                        work / "missing.json",
                        Path("/dev/null"),
                        make_fifo(work),
                        env.bundles["gqa-fp32"] / "model.onnx",
                        Path("/proc/self/mem"),
                    ]
                )
            )
        gqa = str(env.bundles["gqa-fp32"])
        if kind == "devices":
            main, argv, allow = mobile_budget_check.main, ["--bundle", gqa, "--device", "ci-cpu", "--devices"], True
        else:
            argv = [
                "--bundle",
                gqa,
                "--profile",
                "ci-cpu",
                "--out",
                str(work / "b.json"),
                "--prefill-tokens",
                "2",
                "--decode-steps",
                "1",
                "--repeats",
                "1",
                "--warmup-steps",
                "0",
                "--thresholds",
            ]
            main, allow = provider_bench.main, True
        outcome = run_tool(main, [*argv, str(path)])
        problems = record("profiles", outcome, allow)
        assert not problems, f"{kind} {how}: {problems}\n{outcome.error or outcome.stderr[-2000:]}"


def profile_default(kind: str) -> str:
    from omnicoder.runtimes import bench_thresholds

    return str(mobile_budget_check.default_path() if kind == "devices" else bench_thresholds.default_path())


def make_fifo(work: Path) -> Path:
    fifo = work / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return fifo


def prompt_case(env: Env, data, slow: bool) -> None:
    gqa = str(env.bundles["gqa-fp32"])
    with scratch(env) as work:
        path = work / "prompt.txt"
        path.write_bytes(
            data.draw(
                st.one_of(
                    st.binary(max_size=64),
                    st.sampled_from(
                        [b"\xff", b"def f():\xff\n", "ok é".encode(), b"\xef\xbb\xbfx", b"x" * 300, b"\x00"]
                    ),
                )
            )
        )
        choice = data.draw(st.sampled_from(["prompt-file", "prompt", "score", "generate"]))
        common = ["--max-new-tokens", "2", "--temperature", "0", "--threads", "1"]
        if choice == "prompt-file":
            main, argv = onnx_decode_generate.main, ["--bundle", gqa, "--prompt-file", str(path), *common]
        elif choice == "prompt":
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
            main, argv = onnx_decode_generate.main, ["--bundle", gqa, "--prompt", text, *common]
        elif choice == "score":
            target = data.draw(st.sampled_from([path, work, work / "missing", make_fifo(work)]))
            main, argv = onnx_decode_generate.main, ["--bundle", gqa, "--score", str(target), "--threads", "1"]
        else:
            main, argv = (
                generate.main,
                ["--model", str(env.model_dir), "--prompt-file", str(path), "--max-new-tokens", "2"],
            )
        outcome = run_tool(main, argv)
        problems = record("prompts", outcome)
        assert not problems, f"{choice}: {problems}\n{outcome.error or outcome.stderr[-2000:]}"


# ---- model directories -------------------------------------------------------------------------------------------

CONFIG_FOCUS = [
    ("n_layers",),
    ("d_model",),
    ("n_heads",),
    ("n_kv_heads",),
    ("head_dim",),
    ("vocab_size",),
    ("max_seq_len",),
    ("attention",),
    ("rope_theta",),
    ("rope_scaling",),
    ("tokenizer",),
    ("bos_id",),
    ("mlp_hidden",),
    ("norm_eps",),
    ("n_mtp",),
]


def model_dir_case(env: Env, data, slow: bool) -> None:
    with scratch(env) as work:
        model = work / "model"
        shutil.copytree(env.model_dir, model)
        config = (model / "config.json").read_bytes()
        if data.draw(st.booleans()):
            (model / "config.json").write_text(dumps(data.draw(mutated_json(json.loads(config), CONFIG_FOCUS))))
        else:
            name = data.draw(st.sampled_from(["config.json", "model.safetensors"]))
            (model / name).write_bytes(data.draw(mutated_bytes((model / name).read_bytes())))
        tool = data.draw(st.sampled_from(["generate", "eval", "export"]))
        if tool == "generate":
            main, argv = generate.main, ["--model", str(model), "--prompt", "x", "--max-new-tokens", "2"]
        elif tool == "eval":
            main, argv = evaluate.main, ["--model", str(model), "--files", str(env.score_file)]
        else:  # stops at the weights' check or at the NaN check, before any ONNX work when the model is bad
            main, argv = (
                export_cli.main,
                [
                    "--model",
                    str(model),
                    "--out",
                    str(work / "out"),
                    "--target",
                    "coreml",
                    "--weights",
                    "int4",
                    "--deployment-target",
                    "iOS17",
                ],
            )
        outcome = run_tool(main, argv)
        problems = record("model-dir", outcome)
        assert not problems, f"{tool}: {problems}\n{outcome.error or outcome.stderr[-2000:]}"


# ---- export --out: never lose data -------------------------------------------------------------------------------

OUT_KINDS = {  # kind -> exit code expected without --force / with --force
    "new": (0, 0),
    "nested-new": (0, 0),
    "empty-dir": (0, 0),
    "user-dir": (2, 2),
    "user-file": (2, 2),
    "empty-string": (2, 2),
    "dot": (2, 2),
    "dotdot": (2, 2),
    "root": (2, 2),
    "bundle": (0, 0),
    "bundle-extra-file": (2, 2),
    "bundle-modified": (2, 0),
    "bundle-missing-file": (2, 0),
    "symlink": (2, 2),
    "under-a-file": (2, 2),
    "long-name": (2, 2),
    "nul": (2, 2),
    "stale-temps": (0, 0),
}


def fake_export_module():
    """A stand-in exporter (a copy of the vector bundle through atomic_directory), so the --out rules and the
    atomic swap are fuzzed in milliseconds instead of a real export's seconds."""
    import types

    from omnicoder.runtimes.bundle import finalize_bundle

    from omnicoder.fsutil import atomic_directory

    def export_from_cli(model, tokenizer, args, command):
        manifest = json.loads((GOOD / "manifest.json").read_text())
        manifest.pop("files")
        with atomic_directory(args.out) as tmp:
            for name in ("model.onnx", "tokenizer.json", "model.kv_paging.json"):
                shutil.copyfile(GOOD / name, tmp / name)
            manifest = finalize_bundle(tmp, {**manifest, "export": {"seconds": 0.0, "peak_rss_mb": 0.0}})
        return manifest

    return types.SimpleNamespace(export_from_cli=export_from_cli)


def snapshot(root: Path) -> dict[str, str]:
    found = {}
    for parent, dirs, names in os.walk(root, followlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            path = Path(parent) / name
            key = str(path.relative_to(root))
            found[key] = "link" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def prepare_out(kind: str, ws: Path) -> str:
    """Lay out the workspace for `kind`; returns the --out value (relative to ws, the current directory)."""
    (ws / "keep.txt").write_text("a user's file next to the bundle\n")
    if kind in ("user-dir", "bundle-extra-file"):
        (ws / "out").mkdir()
        (ws / "out" / "precious.txt").write_text("precious\n")
    if kind == "empty-dir":
        (ws / "out").mkdir()
    if kind == "user-file":
        (ws / "out").write_text("a file\n")
    if kind.startswith("bundle"):
        shutil.copytree(GOOD, ws / "out", dirs_exist_ok=True)
    if kind == "bundle-modified":
        (ws / "out" / "tokenizer.json").write_text('{"edited": true}')
    if kind == "bundle-missing-file":
        (ws / "out" / "model.kv_paging.json").unlink()
    if kind == "symlink":
        (ws / "real").mkdir()
        (ws / "real" / "precious.txt").write_text("precious\n")
        (ws / "out").symlink_to(ws / "real")
    if kind == "under-a-file":
        (ws / "afile").write_text("x\n")
        return "afile/out"
    if kind == "stale-temps":
        dead = dead_pid()
        (ws / f".out.tmp-{dead}-abc").mkdir()
        (ws / f".out.tmp-{dead}-abc" / "half.onnx").write_text("half\n")
    return {
        "empty-string": "",
        "dot": ".",
        "dotdot": "..",
        "root": "/",
        "nested-new": "a/b/out",
        "long-name": "x" * 300,
        "nul": "a\x00b",
    }.get(kind, "out")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def export_out_case(env: Env, data, slow: bool) -> None:
    kind, force = data.draw(st.sampled_from(sorted(OUT_KINDS))), data.draw(st.booleans())
    extra = []
    if data.draw(st.integers(0, 3)) == 0:
        extra = [data.draw(st.sampled_from(NUMERIC_FLAGS["export"])), data.draw(flag_values())]
    with scratch(env) as work:
        ws = work / "ws"
        ws.mkdir()
        out = prepare_out(kind, ws)
        before = snapshot(work)
        listed = set(json.loads((GOOD / "manifest.json").read_text())["files"]) | {"manifest.json"}
        cwd = os.getcwd()
        saved = export_cli.TARGETS["onnx"]
        sys.modules["omnicoder_fuzz_fake_export"] = fake_export_module()
        export_cli.TARGETS["onnx"] = ("omnicoder_fuzz_fake_export", *saved[1:])
        os.chdir(ws)
        try:
            argv = ["--target", "onnx", "--model", str(env.model_dir), "--weights", "fp32", "--out", out]
            outcome = run_tool(export_cli.main, [*argv, *(["--force"] if force else []), *extra])
        finally:
            os.chdir(cwd)
            export_cli.TARGETS["onnx"] = saved
        problems = record("export-out", outcome)
        assert not problems, f"{kind} force={force} {extra}: {problems}\n{outcome.error or outcome.stderr}"
        after = snapshot(work)
        lost = [k for k, v in before.items() if after.get(k) != v and not replaced_bundle_file(k, outcome, listed)]
        lost = [k for k in lost if not (kind == "stale-temps" and "/.out.tmp-" in f"/{k}")]
        TOTALS[("export-out", "data lost")] += len(lost)
        assert not lost, f"{kind} force={force}: lost or changed {lost}"
        if not extra:
            expected = OUT_KINDS[kind][1 if force else 0]
            assert outcome.code == expected, f"{kind} force={force}: exit {outcome.code}, expected {expected}"
        if kind == "stale-temps" and outcome.code == 0:
            assert not list(ws.glob(".out.tmp-*")), "a dead export's temp folder was left behind"


def replaced_bundle_file(key: str, outcome, listed: set[str]) -> bool:
    """A file of the bundle at --out that a successful export replaced."""
    parts = Path(key).parts
    return outcome.code == 0 and len(parts) == 3 and parts[:2] == ("ws", "out") and parts[2] in listed


# ---- the runs ------------------------------------------------------------------------------------------------------

CASES = {
    "manifest": manifest_case,
    "sidecars": sidecar_case,
    "tokenizer": tokenizer_case,
    "bytes": bytes_case,
    "flags": flag_case,
    "profiles": profile_case,
    "prompts": prompt_case,
    "model-dir": model_dir_case,
    "export-out": export_out_case,
}


def run_family(env: Env, family: str, slow: bool) -> None:
    @sized(family, slow)
    @given(st.data())
    def run(data):
        TOTALS[(family, "examples")] += 1
        CASES[family](env, data, slow)

    run()


@pytest.fixture(scope="module")
def peak_rss(env):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
    assert grown < 1536, f"peak memory grew by {grown:.0f} MiB over the fuzz run"


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_input_is_one_line(env, peak_rss, family):
    run_family(env, family, slow=False)


@pytest.mark.slow
def test_bad_input_thousands(env, peak_rss):
    """Thousands of cases; prints the totals per family (inputs tried, exit codes, tracebacks, data lost)."""
    TOTALS.clear()
    for family in FAMILIES:
        run_family(env, family, slow=True)
    summary = report_totals(FAMILIES)
    print("\n" + summary)
    (Path("build") / "fuzz_totals.txt").parent.mkdir(exist_ok=True)
    (Path("build") / "fuzz_totals.txt").write_text(summary + "\n")


# ---- real processes: exit codes, and memory under a hard limit ----------------------------------------------------

# (file, path, value) edits; the coherent ones also edit the sidecar and empty graph.inputs/outputs (which would
# contradict them), so only the graph itself can tell the manifest is false
HOSTILE_SIZES = {
    "n_layers=10^30": [("manifest.json", ("model", "n_layers"), 10**30)],
    "coherent n_layers=1000": [
        ("manifest.json", ("model", "n_layers"), 1000),
        ("model.kv_paging.json", ("n_layers",), 1000),
    ],
    "coherent context=2^24": [
        ("manifest.json", ("model", "context_length"), 1 << 24),
        ("model.kv_paging.json", ("context_length",), 1 << 24),
    ],
    "coherent kv heads=4096": [
        ("manifest.json", ("model", "n_heads"), 4096),
        ("manifest.json", ("model", "n_kv_heads"), 4096),
        ("manifest.json", ("graph", "kv", "heads"), 4096),
        ("model.kv_paging.json", ("heads",), 4096),
        ("model.kv_paging.json", ("bytes_per_token_per_layer",), 4096 * 2 * 16 * 4),
    ],
}


def limited_run(argv: list[str], limit_bytes: int = 3 << 30) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=limit)


def edit_bundle(bundle: Path, edits: list) -> None:
    documents = {}
    for name, path, value in edits:
        document = documents.setdefault(name, json.loads((bundle / name).read_text()))
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value
    if len(edits) > 1:
        documents["manifest.json"]["graph"]["inputs"] = documents["manifest.json"]["graph"]["outputs"] = []
    for name, document in documents.items():
        (bundle / name).write_text(dumps(document))
    rehash(bundle)


@pytest.mark.parametrize("case", sorted(HOSTILE_SIZES))
def test_hostile_sizes_under_a_memory_limit(bundles, tmp_path, case):
    """Sizes a runtime allocates from are refused before anything is allocated: the real console scripts, under a
    3 GiB address-space limit, exit 2 with one line (the budget tools only compute, and may answer too)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["gqa-fp32-lean"][2], bundle)
    edit_bundle(bundle, HOSTILE_SIZES[case])
    for module, extra, answers in [
        ("omnicoder.runtimes.onnx_decode_generate", ["--prompt", "x", "--max-new-tokens", "2"], False),
        (
            "omnicoder.runtimes.provider_bench",
            [
                "--out",
                str(tmp_path / "b.json"),
                "--prefill-tokens",
                "1",
                "--decode-steps",
                "1",
                "--repeats",
                "1",
                "--warmup-steps",
                "0",
            ],
            False,
        ),
        ("omnicoder.runtimes.kv_budget_enforce", ["--budget-mb", "1"], True),
        ("omnicoder.runtimes.mobile_budget_check", ["--device", "ci-cpu"], True),
    ]:
        proc = limited_run([sys.executable, "-m", module, "--bundle", str(bundle), *extra])
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr, (module, proc.stderr[-3000:])
        if answers and proc.returncode in (0, 1):
            continue
        assert proc.returncode == 2, (module, proc.returncode, proc.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error:"), (module, proc.stderr[-2000:])


def test_console_scripts_exit_2_with_one_line(bundles, tmp_path):
    """A few inputs through the installed console scripts, to prove the real exit codes."""
    bin_dir = Path(sys.executable).parent
    bad = tmp_path / "bad"
    shutil.copytree(bundles["gqa-fp32"][2], bad)
    (bad / "model.kv_paging.json").write_bytes(b"\xff" + (bad / "model.kv_paging.json").read_bytes()[1:])
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "precious.txt").write_text("precious\n")
    cases = [
        ["omnicoder-kv-budget", "--bundle", str(bad), "--budget-mb", "1"],
        ["omnicoder-kv-budget", "--bundle", str(bundles["gqa-fp32"][2]), "--budget-mb", "inf"],
        ["omnicoder-mobile-check", "--bundle", str(bad), "--device", "ci-cpu"],
        [
            "omnicoder-onnx-generate",
            "--bundle",
            str(bundles["gqa-fp32"][2]),
            "--prompt",
            "x",
            "--threads",
            "1000000000000",
        ],
        [
            "omnicoder-onnx-generate",
            "--bundle",
            str(bundles["gqa-fp32"][2]),
            "--score",
            str(bad / "tokenizer.json"),
            "--score-window",
            "-1",
        ],
        ["omnicoder-export", "--target", "onnx", "--model", "default", "--out", str(tmp_path / "v")],
        ["omnicoder-export", "--target", "onnx", "--model", "default", "--out", ""],
        ["omnicoder-export", "--target", "onnx", "--model", "default", "--opset", "999", "--out", str(tmp_path / "n")],
    ]
    for argv in cases:
        proc = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr[-3000:])
        assert len(lines) == 1 and "error:" in lines[0], (argv, proc.stderr)
    assert (tmp_path / "v" / "precious.txt").read_text() == "precious\n"
    assert not (tmp_path / "n").exists()
