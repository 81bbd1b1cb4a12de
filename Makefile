# The two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test app-tests lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
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

# the sample apps' cores (Kotlin on the JVM, Swift natively or in a Debian chroot) + glue syntax; see docs/apps.md
app-tests:
	apps/run_app_tests.sh

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
