# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-gpu lint bench clean

setup: $(VENV)/.installed

# torch first and pinned: 2.13.0 is the CPU build on a machine without a GPU here, and once it is
# installed sentence-transformers takes it as it is instead of pulling a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/kiln demo

lint: setup
	$(BIN)/ruff check src tests tests_gpu bench

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# GPU code paths: on a machine with an NVIDIA GPU (CI has none; bench/gpu.sh runs them on a lent one).
test-gpu: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests_gpu

bench: setup
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
