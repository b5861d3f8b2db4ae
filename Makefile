# SutazAI — the two commands a newcomer needs:
#   make run    set everything up, then run the main job (mirror, verify, register)
#   make test   set everything up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := 25.3
# The install is redone only when the pins (constraints.txt) or dependencies (setup.cfg) change.
INSTALL_HASH := $(shell cat constraints.txt setup.cfg | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(INSTALL_HASH)

export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: run test setup system-deps lint typecheck check benchmark constraints clean help

help:
	@echo "make run        set up and run the main job (mirror + verify + register the catalog)"
	@echo "make test       set up and run the whole test suite"
	@echo "make check      lint + type-check"
	@echo "make benchmark  pull throughput vs curl + sha256sum (1 GiB, local nginx)"

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP):
	@echo "setting up $(VENV) from constraints.txt (first time: several minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	@$(BIN)/python -m pip install -q -c constraints.txt -e ".[platform,dev]" 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -m pip check >/dev/null
	@$(BIN)/python -c "import sutazai, mlflow, kfp, airflow, torch, llama_cpp, spacy"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/sutazai run

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check sutazai tests benchmarks scripts

typecheck: setup
	$(BIN)/mypy

check: lint typecheck

benchmark: setup
	$(BIN)/python benchmarks/pull_throughput.py

# Regenerate the pins from a fresh, unconstrained resolution (review the diff!).
constraints:
	rm -rf /tmp/sutazai-constraints && $(PYTHON) -m venv /tmp/sutazai-constraints
	/tmp/sutazai-constraints/bin/pip install -q "pip==$(PIP_VERSION)"
	/tmp/sutazai-constraints/bin/pip install -q -e ".[platform,dev]"
	( sed -n '1,2p' constraints.txt; /tmp/sutazai-constraints/bin/pip freeze --exclude-editable ) \
	  > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .sutazai test-artifacts
