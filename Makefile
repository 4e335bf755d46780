# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the whole test suite).
# Each creates .venv on first use. torch==2.13.0 is installed first so that the project's own torch range
# is already satisfied and pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,onnx,hf]"
	$(BIN)/python -c "import torch; v = torch.__version__; print('torch', v); assert v.startswith('2.13.0'), v"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/slimtorch demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[dev,onnx,hf,bench]"  # the peers (torch stays 2.13.0: already installed)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out slimtorch-demo
