# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   - create .venv, install, run the main job on a generated synthetic model pair
#   make test   - create .venv, install torch (CPU, pinned) and the test extra, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Byte-compile the editable package as pip does for a regular install: where
# PYTHONDONTWRITEBYTECODE is set, every command would compile the sources again (0.04 s).
$(VENV)/.installed: $(BIN)/python setup.py
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m compileall -q weightsurgeon
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.py
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q weightsurgeon
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/surgeon demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) demo-work .pytest_cache
