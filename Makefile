# Set-up is part of every target: a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint mutation setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on local disk. A bare "torch" would pull a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perforate demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Mutation testing of the library core (docs/testing.md); about 15 minutes on 2 cores.
mutation: $(STAMP)
	$(PY) tools/mutation.py --per-module 40 --workers 2 --out docs/mutation.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info
