# mixplane: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
# torchtitan pins datasets<4.8 (ours takes the newest): it lives in its own venv
TITAN_VENV := .venv-torchtitan
TITAN_STAMP := $(TITAN_VENV)/.installed
DEMO_HOME ?= .mixplane-demo

.PHONY: venv demo test lint bench peers clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,demo,torch,hf,server,ray,megatron,olmo,trainers]'
	@touch $(STAMP)

$(TITAN_STAMP): pyproject.toml
	@test -x $(TITAN_VENV)/bin/python || $(PYTHON) -m venv $(TITAN_VENV)
	$(TITAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TITAN_VENV)/bin/python -m pip install --quiet -e '.[torchtitan]'
	@touch $(TITAN_STAMP)

demo: venv
	$(VENV)/bin/mixplane --home $(DEMO_HOME) demo

lint: venv
	$(VENV)/bin/ruff check mixplane tests benchmarks examples
	$(VENV)/bin/mypy

test: lint $(TITAN_STAMP)
	# two processes (one per core of the CI machine), each test file kept in one of them (module
	# fixtures such as the Ray cluster start once): 7 minutes instead of 11 here
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -n 2 --dist loadfile --durations=15

bench: venv
	$(VENV)/bin/python benchmarks/ingest.py

# mixplane against its peers (benchmarks/peers.py; outside `make test`): builds the peers' venvs
# under .peers/ (~8 GB, once) and prints the table. PEERS_SIZE=tiny|small|medium|full.
PEERS_SIZE ?= small
peers: venv
	bash benchmarks/peers_setup.sh
	$(VENV)/bin/python benchmarks/peers.py --size $(PEERS_SIZE)

clean:
	rm -rf $(VENV) $(TITAN_VENV) $(DEMO_HOME) .pytest_cache .mypy_cache .ruff_cache
