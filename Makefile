# `make demo` and `make test` set everything up on a fresh machine (Python 3.11) and run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: that release lies on disk here as a CPU build; an unpinned
# requirement would pull a multi-GB CUDA build instead.
TORCH := torch==2.13.0

.PHONY: demo test lint bench setup

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/ticketlab imp

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/level_time.py
	$(PY) benchmarks/batched_speed.py
	$(PY) benchmarks/sparse_speed.py
	$(PY) benchmarks/augment_speed.py
	$(PY) benchmarks/export_speed.py
	$(PY) benchmarks/kill_resume.py
