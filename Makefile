# Set-up is part of every target: a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint mutation setup clean wheel-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on local disk. A bare "torch" would pull a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perforate demo

test: $(STAMP) wheel-check
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The wheel alone: built, installed without extras in a fresh venv (torch first, as above),
# then imported and trained from outside the source tree (tools/wheel_smoke.py).
WHEEL_DIR := build/wheel-check
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR) build/lib build/bdist.*  # no stale build output in the wheel
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet "torch==2.13.0"
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet $(WHEEL_DIR)/dist/perforate-*.whl
	cd $(WHEEL_DIR) && PATH="$(CURDIR)/$(WHEEL_DIR)/venv/bin:$$PATH" venv/bin/python $(CURDIR)/tools/wheel_smoke.py

# Mutation testing of every library module, 20 sampled mutants each (docs/testing.md);
# about 10-20 minutes on 2 cores. MUTATION_SEED=12 is the sample held out from every
# round of pinning tests (written against seeds 0, 7-11, 100, 200, 300): judge the next
# round on a new seed.
MUTATION_SEED ?= 12
mutation: $(STAMP)
	$(PY) tools/mutation.py --per-module 20 --workers 2 --seed $(MUTATION_SEED) --out docs/mutation.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info
