# Nullius: `make demo` brings up a local network, `make test` runs every test.
# Both install what they need first: the Python venv (pinned in pyproject.toml) and anvil (npm).

PYTHON ?= python3
VENV := .venv
ANVIL_BIN := node_modules/@foundry-rs/anvil-linux-amd64/bin
# ape-vyper finds vyper with `which`, and ape-foundry finds anvil the same way
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/$(ANVIL_BIN):$(PATH)

.PHONY: install compile demo test test-contracts test-agents bench models clean

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --include=optional
	touch $@

compile: install
	ape compile

demo: compile
	$(VENV)/bin/nullius devnet $(ARGS)

test: compile test-contracts test-agents

test-contracts:
	ape test tests/contracts

# ape's pytest plugin would start its own anvil for these; they start theirs.
test-agents:
	$(VENV)/bin/python -m pytest -p no:ape_test -q tests/agents tests/benchmarks tests/e2e

bench: compile
	$(VENV)/bin/python -m benchmarks.latency
	$(VENV)/bin/python -m benchmarks.gas
	$(VENV)/bin/python -m benchmarks.artifact_size

models: install
	$(VENV)/bin/python scripts/train_model.py

clean:
	rm -rf .build devnet-data
