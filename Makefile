# forge_trl: `make demo` runs pretrain -> SFT -> ORPO on the embedded tiny model; `make test` runs the static checks
# (ruff, mypy, import layering) and the tests.
# Both install into .venv on first use. GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url <cuda index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forge_installed
PYTEST_ARGS ?=

# Pipeline paths (forge-trl pipeline, forge_trl/commands/pipeline.py): each chains final/ directories and ends with
# a bench table.
# make path-c MODEL=qwen3_0_6b INJECTION=moe_expert_lora DATA=data/mine OUT=outputs/qwen PIPELINE_ARGS="task.max_steps=200"
MODEL ?= tiny
INJECTION ?= dense_lora
DATA ?= demo
OUT ?= outputs/pipelines
PIPELINE_ARGS ?=
PIPELINE := $(VENV)/bin/forge-trl pipeline model=$(MODEL) injection=$(INJECTION) data=$(DATA) out=$(OUT) $(PIPELINE_ARGS)

.PHONY: install demo check test test-all clean browser path-a path-b path-c path-d path-e pipelines

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m forge_trl.demo

path-a: $(STAMP)
	$(PIPELINE) paths=a

path-b: $(STAMP)
	$(PIPELINE) paths=b

path-c: $(STAMP)
	$(PIPELINE) paths=c

path-d: $(STAMP)
	$(PIPELINE) paths=d

path-e: $(STAMP)
	$(PIPELINE) paths=e

# All five paths; shared stages (pretrain, SFT, SFT -> DPO, SFT -> ORPO) train once. One combined table.
pipelines: $(STAMP)
	$(PIPELINE) paths=a,b,c,d,e

# Static checks first (seconds): lint, format, types, and the package's import layering (pyproject.toml).
check: $(STAMP)
	$(VENV)/bin/ruff check forge_trl tests benchmarks
	$(VENV)/bin/ruff format --check forge_trl tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# tests/test_report.py opens reports in a headless Chromium (Debian's package; Playwright's own browser download
# needs its CDN). Installed once with apt (sudo when not root); a no-op when chromium is already there.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium >/dev/null)

test: check browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: check browser
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache

# ---- multi-process launches (accelerate): begin --------------------------------------------------------------
# make train-ddp ARGS="task=sft model=qwen3_0_6b" NPROC=4     DDP, one process per GPU (configs in conf/accelerate/)
# make train-fsdp2 ARGS="task=sft model=qwen3_0_6b" NPROC=4   FSDP2: weights, gradients, optimizer state sharded
# make train-cpu2 ARGS="task=sft task.max_steps=20"           two CPU processes over gloo (DDP), no GPU needed
# make train-cpu2-fsdp2 ARGS="task=sft task.max_steps=20"     two CPU processes, FSDP2, no GPU needed
# Multi-node, FSDP2: the same command on every machine, MACHINE_RANK 0..NNODES-1, MAIN_IP the address of machine 0,
# NPROC the total number of processes (machines x GPUs each); output_dir must be on storage all machines share:
# make train-multinode NNODES=2 NPROC=16 MACHINE_RANK=0 MAIN_IP=10.0.0.1 ARGS="task=sft output_dir=/shared/sft"
NPROC ?= 2
NNODES ?= 2
MACHINE_RANK ?= 0
MAIN_IP ?= 127.0.0.1
MAIN_PORT ?= 29500
ARGS ?=
ACCELERATE := $(VENV)/bin/accelerate

.PHONY: train-cpu2 train-cpu2-fsdp2 train-ddp train-fsdp2 train-multinode

train-cpu2: $(STAMP)
	OMP_NUM_THREADS=1 $(ACCELERATE) launch --config_file conf/accelerate/cpu_2proc.yaml -m forge_trl $(ARGS)

train-cpu2-fsdp2: $(STAMP)
	OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= $(ACCELERATE) launch --config_file conf/accelerate/fsdp2.yaml \
		--num_processes 2 -m forge_trl $(ARGS)

train-ddp: $(STAMP)
	$(ACCELERATE) launch --config_file conf/accelerate/ddp.yaml --num_processes $(NPROC) -m forge_trl $(ARGS)

train-fsdp2: $(STAMP)
	$(ACCELERATE) launch --config_file conf/accelerate/fsdp2.yaml --num_processes $(NPROC) -m forge_trl $(ARGS)

train-multinode: $(STAMP)
	$(ACCELERATE) launch --config_file conf/accelerate/multinode.yaml --num_machines $(NNODES) \
		--num_processes $(NPROC) --machine_rank $(MACHINE_RANK) --main_process_ip $(MAIN_IP) \
		--main_process_port $(MAIN_PORT) -m forge_trl $(ARGS)
# ---- multi-process launches (accelerate): end ----------------------------------------------------------------
