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
# the suite on every core (one worker per core, whole files per worker so module fixtures run once)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: setup demo test bench lint clean report-ci baseline browser gpu-prep gpu-prep-mamba-ssm

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mamba-bench demo --out $(DEMO_OUT)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# Debian's Chromium for the report's headless-browser test (the test is skipped where it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)); } || \
	  echo "chromium not installed: the report's browser test will be skipped"

# The CI robustness gate: rerun the quick embedded run and compare it with the committed baseline
# (exit 1 on a regression: a top-1 drop of more than 1 point that McNemar's test calls significant).
report-ci: $(STAMP)
	rm -rf runs/ci
	$(BIN)/mamba-bench demo --quick --out runs/ci --no-progress
	$(BIN)/mamba-bench compare reports/baseline runs/ci --max-drop 1.0 --format markdown

# Re-make the committed baseline (after an intended change of results; commit reports/baseline/).
baseline: $(STAMP)
	rm -rf runs/ci reports/baseline
	$(BIN)/mamba-bench demo --quick --out runs/ci --no-progress
	$(BIN)/mamba-bench report runs/ci --out reports/baseline --title "mamba-bench CI baseline"

bench: $(STAMP)
	$(BIN)/mamba-bench bench corrupt --out runs/bench

# What scripts/gpu_check.sh needs on a CUDA machine with no package index: wheels for Python 3.12 x86-64
# of what such an image lacks for `bench pipeline` (imaug, its corruption data, shapely), into .gpu/
# (git-ignored, ~6 MB). Nothing to build: the selective scan runs on Triton there.
GPU_PY ?= 3.12
MAMBA_SSM ?= 2.3.2.post1
gpu-prep:
	mkdir -p .gpu
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .gpu imaug==0.4.3 imagecorruptions-imaug==1.1.5 shapely==2.2.0
	ls -la .gpu

# Optional: mamba-ssm's sdist into .gpu/, for gpu_check.sh's `mamba` step (builds its selective-scan kernel
# there, ~2.5 min, to time the `cuda` backend beside `triton`). Its setup.py imports torch: the venv's, no
# build isolation, no CUDA build here.
gpu-prep-mamba-ssm: $(STAMP)
	mkdir -p .gpu
	MAMBA_SKIP_CUDA_BUILD=TRUE $(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
	  --no-build-isolation -d .gpu mamba-ssm==$(MAMBA_SSM)
	ls -la .gpu

lint: $(STAMP)
	$(BIN)/ruff check mamba_bench tests scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
