# `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev/test torch is pinned here, never in requirements.txt.
TORCH_PINS := torch==2.9.1 torchaudio==2.9.1
# Attention libraries, installed without their dependencies (they would pull another torch) so that
# tests/test_attention_contracts.py checks our calls against their real front ends on the CPU:
# xformers 0.0.33.post1 is the build for torch 2.9.1; sageattention 1.x is Triton code.
# flash-attn has no CPU wheel (source archive needing nvcc): its API is stood in for in that test.
ATTENTION_PINS := xformers==0.0.33.post1 sageattention==1.0.6

.PHONY: setup test lint validate pack demo clean

$(VENV)/.installed: pyproject.toml requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(ATTENTION_PINS)
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

# The Comfy Registry's checks: `comfy node validate` must print no finding (comfy-cli is a test
# extra; no network needed). `make pack` builds the archive the registry would get into dist/.
validate: setup
	$(PY) tests/registry_check.py validate

pack: setup
	$(PY) tests/registry_check.py pack dist

test: setup lint validate
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/instructav2av demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
