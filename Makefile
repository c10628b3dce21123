# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   install, then run the daily DAG end to end on the embedded default data
#   make test   install (with test extras), then run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py constraints.txt
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned first, from its CPU build, so nothing resolves a CUDA torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]" -c constraints.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m tools.demo

test: install
	bash scripts/install-system-test-deps.sh
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf var .pytest_cache
