"""The runtime side never imports torch: prove it with torch made unimportable."""

import subprocess
import sys

BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True)


def test_runtimes_import_without_torch():
    code = (
        "import pkgutil, importlib, omnicoder, omnicoder.runtimes as rt\n"
        "mods = [m.name for m in pkgutil.iter_modules(rt.__path__)]\n"
        "for m in mods: importlib.import_module('omnicoder.runtimes.' + m)\n"
        "import omnicoder.tokenizer, omnicoder.config, omnicoder.presets\n"
        "assert 'torch' not in sys.modules\n"
        "print(len(mods))\n"
    )
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 2


def test_blocker_really_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr
