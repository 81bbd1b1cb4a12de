"""llama.cpp as a peer: built from llama-cpp-python's source distribution, with portable CPU flags.

A native build (`-DGGML_NATIVE=ON`) dies with SIGILL on VMs that show instructions they refuse (docs/STACK notes),
so the build names AVX2/FMA/F16C explicitly. Everything lives under the peers' folder (build/peers/llama.cpp).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SDIST_PIN = "llama-cpp-python==0.3.36"
TARGETS = ["llama-bench", "llama-quantize", "llama-perplexity", "llama-completion", "llama-tokenize"]
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]


def tool(root: Path, name: str) -> Path:
    return root / "build" / "bin" / name


def ensure_llamacpp(root: Path, log: Path, jobs: int = 2) -> dict:
    """Build the tools in TARGETS once (a rebuild is incremental); returns what the build recorded (seconds, flags)."""
    record = root / "build" / "omnicoder_build.json"
    if all(tool(root, name).is_file() for name in TARGETS):
        previous = json.loads(record.read_text()) if record.is_file() else {}
        return {**previous, "reused": True}
    start = time.perf_counter()
    if not (root / "CMakeLists.txt").is_file():
        src = root.parent / "src"
        src.mkdir(parents=True, exist_ok=True)
        if not list(src.glob("llama_cpp_python-*.tar.gz")):
            print(f"downloading the {SDIST_PIN} source distribution", flush=True)
            pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", SDIST_PIN]
            _run([*pip, "-d", str(src)], log)
        sdist = sorted(src.glob("llama_cpp_python-*.tar.gz"))[-1]
        with tarfile.open(sdist) as archive:
            prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix) :]
            archive.extractall(root, members=[m for m in members if m.name], filter="data")
    print(f"building llama.cpp ({', '.join(TARGETS)}) in {root}: ~10-20 min on 2 cores", flush=True)
    _run(["cmake", "-S", str(root), "-B", str(root / "build"), "-G", "Ninja", *CMAKE_FLAGS], log)
    _run(["cmake", "--build", str(root / "build"), "--target", *TARGETS, f"-j{jobs}"], log)
    built = {"seconds": round(time.perf_counter() - start, 1), "source": SDIST_PIN, "flags": CMAKE_FLAGS}
    built["targets"] = TARGETS
    record.write_text(json.dumps(built, indent=2) + "\n")
    return built


def _run(cmd: list, log: Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def quantize(root: Path, source: Path, out: Path, kind: str, log: Path, threads: int) -> Path:
    """`llama-quantize --allow-requantize SOURCE OUT KIND` (kept when present)."""
    if not out.is_file():
        _run([tool(root, "llama-quantize"), "--allow-requantize", source, out, kind, str(threads)], log)
    return out


def bench(root: Path, model: Path, prompt: int, gen: int, threads: int, log: Path, repetitions: int = 5) -> str:
    """`llama-bench -p PROMPT -n GEN -d 0,PROMPT -t THREADS -o json`: prefill at depth 0, decode after the prompt."""
    cmd = [tool(root, "llama-bench"), "-m", model, "-p", str(prompt), "-n", str(gen), "-d", f"0,{prompt}"]
    return _run([*cmd, "-t", str(threads), "-r", str(repetitions), "-o", "json"], log).stdout


def perplexity(root: Path, model: Path, text: Path, n_ctx: int, threads: int, log: Path) -> str:
    """`llama-perplexity -f TEXT -c N_CTX -b N_CTX` (its default scheme: second half of each chunk scored)."""
    cmd = [tool(root, "llama-perplexity"), "-m", model, "-f", text, "-c", str(n_ctx), "-b", str(n_ctx), "--no-escape"]
    proc = _run([*cmd, "-t", str(threads)], log)
    return proc.stdout + proc.stderr


def tokenize(root: Path, model: Path, text: Path, log: Path) -> list[int]:
    """Token ids of a text file as llama.cpp tokenizes it (no BOS unless the model adds one)."""
    cmd = [tool(root, "llama-tokenize"), "-m", model, "-f", text, "--ids", "--log-disable", "--no-escape"]
    out = _run(cmd, log).stdout
    line = next(line for line in reversed(out.splitlines()) if line.startswith("["))
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


def generate_cmd(root: Path, model: Path, prompt_file: Path, gen: int, threads: int, n_ctx: int) -> list[str]:
    """A greedy GEN-token generation from a prompt file (llama-completion, no conversation mode)."""
    cmd = [
        tool(root, "llama-completion"),
        "-m",
        model,
        "-f",
        prompt_file,
        "-n",
        str(gen),
        "-c",
        str(n_ctx),
        "--no-escape",
    ]
    return [str(c) for c in [*cmd, "-t", str(threads), "-no-cnv", "--temp", "0", "--ignore-eos", "--no-display-prompt"]]
