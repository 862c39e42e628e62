# mixplane: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_HOME ?= .mixplane-demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,demo,torch,hf,server,ray,megatron,trainers]'
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/mixplane --home $(DEMO_HOME) demo

lint: venv
	$(VENV)/bin/ruff check mixplane tests benchmarks examples
	$(VENV)/bin/mypy

test: lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

bench: venv
	$(VENV)/bin/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .mypy_cache .ruff_cache
