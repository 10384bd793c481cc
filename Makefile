# Two commands do everything on a fresh machine: `make run` and `make test`.
# Installs take the exact tested set in constraints.txt, so an upstream release cannot change
# what CI runs; `make lock` refreshes that set (resolve newest, run the suite, write the file).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medfake-installed
EXTRAS ?= cpu,dev,openvino
CONSTRAINTS ?= constraints.txt
PYTEST_ARGS ?=

.PHONY: setup run test bench lock clean

setup: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/medfake run

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/medfake bench

lock:
	bash .ci/lock

clean:
	rm -rf $(VENV) *.egg-info runs
