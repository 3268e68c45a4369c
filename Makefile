# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   bootstrap, then `cnnlab train` on Fashion-MNIST (extra flags: make demo ARGS="--epochs 2")
#   make test   bootstrap, then the test suite                  (extra flags: make test PYTEST_ARGS="-k idx")
#   make lint   ruff check and ruff format --check (CI runs it before the tests)
# Bootstrap = a .venv with the pinned packages and cnnlab (editable), and the Fashion-MNIST data where
# apt can install it. Both targets are idempotent: a second run skips what is there.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnlab-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint fuzz bootstrap data browser clean-venv

demo: bootstrap
	$(BIN)/cnnlab train $(ARGS)

test: bootstrap browser
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)

# ruff, configured in pyproject.toml (line length 120): the lint rules, and the formatting as ruff format leaves it
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fuzz targets of tests/test_fuzz.py with fresh seeds, FUZZ_SECONDS each (5 targets: 10 minutes in all);
# a crash is kept in tests/corpus/<target>/ and fails the run.
FUZZ_SECONDS ?= 120
fuzz: bootstrap
	CNNLAB_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest tests/test_fuzz.py::test_fuzz -p no:xdist -p no:cacheprovider -s -q -W ignore

bootstrap: $(STAMP) data

# Re-installs only when the package list changes. pip takes torch/torchvision from the wheels on
# this machine's disk where they are (see requirements-dev.txt).
$(STAMP): pyproject.toml requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt -e .
	@touch $@

data:
	@bash scripts/get-fashion-mnist.sh

browser:
	@bash scripts/get-chromium.sh

clean-venv:
	rm -rf $(VENV)
