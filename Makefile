# forge_trl: `make demo` runs pretrain -> SFT -> ORPO on the embedded tiny model; `make test` runs the tests.
# Both install into .venv on first use. GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url <cuda index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forge_installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m forge_trl.demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
