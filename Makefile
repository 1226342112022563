# gc10lib — two commands do all the set-up on a fresh machine:
#   make run    install if needed, then run the demo pipeline on the embedded synthetic data
#   make test   install if needed, then ruff (lint and format) + the whole pytest suite
#   make test-fast   the tests that train, export and run no notebooks (under 2 minutes on 2 CPU cores)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gc10-installed
CONFIG ?= demo
# Point GC10_WEIGHTS_DIR at offline ImageNet weights (e.g. ../shared/weights) when it exists.
export GC10_WEIGHTS_DIR ?= $(shell [ -d ../shared/weights ] && cd ../shared/weights && pwd)
export MPLBACKEND ?= Agg
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install run gc10 test test-fast lint clean-cache docs-run

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]' || $(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (gc10)"
	touch $(STAMP)

run: install
	$(BIN)/gc10 run --config $(CONFIG)

# Real GC10-DET on a CPU: download it into data/gc10 when missing (needs network), then configs/gc10-cpu.yaml.
gc10: install
	[ -d data/gc10/images ] || $(BIN)/gc10 data download data/gc10
	$(BIN)/gc10 run --config gc10-cpu -p data_dir data/gc10

test: install lint
	$(BIN)/pytest -n 2 --dist loadgroup

test-fast: install lint
	$(BIN)/pytest -m "not slow" -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gc10lib tests benchmarks notebooks docs
	$(BIN)/mypy

# Executed copies of a real-weights run's notebooks, for reading in the repository (each <= 2 MiB), and its results page:
#   make docs-run RUN=runs/xsdd-s42 NAME=xsdd ABOUT="X-SDD (Feng et al., Symmetry 2021; Apache-2.0)"
docs-run: install
	$(BIN)/gc10 report $(RUN) --notebooks docs/notebooks/$(NAME) --out docs/results/$(NAME).md --title "$(NAME)" --about "$(ABOUT)"

clean-cache:
	rm -rf .cache/gc10lib
