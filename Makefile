# `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev/test torch is pinned here, never in requirements.txt.
TORCH_PINS := torch==2.9.1 torchaudio==2.9.1

.PHONY: setup test lint demo clean

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/instructav2av demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
