# Every target sets itself up: `.venv` is created and filled when missing or when pyproject.toml changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mamba-bench-installed
ARCH := $(shell uname -m)
# The torch/torchvision pair that import together from the local wheels of this machine kind
# (PyPI's torchvision does not import beside the plain 2.13.0 CPU wheel).
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
export MPLBACKEND := Agg
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mamba-bench demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/mamba-bench bench corrupt --out runs/bench

lint: $(STAMP)
	$(BIN)/ruff check mamba_bench tests

clean:
	rm -rf $(VENV) runs .pytest_cache
