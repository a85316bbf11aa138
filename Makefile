# The README's two commands: `make demo` and `make test`.
#
# Each runs in a Python virtual environment: the one it is started in (an activated venv, virtualenv or
# conda environment), or else the project's own `.venv`, which it creates on first use. So they also work
# where the system Python refuses `pip install` (PEP 668 "externally managed": Debian 12, Ubuntu 24.04,
# Homebrew), and they never install anything into the system Python.
#
#   make demo                        # the whole series 01 -> 06 on generated data, on the CPU
#   make test                        # the test suite (what CI runs)
#   make test PYTHON=/usr/bin/python3  # the Python that creates .venv (default: python3 on PATH)
#   make clean-venv                  # delete .venv (the next command creates it again)

PYTHON ?= python3
VENV ?= .venv
# The demo writes only into a folder it created itself (it refuses a folder holding other data).
WORKSPACE ?= ./demo_workspace

# 1 when $(PYTHON) already runs inside a virtual or conda environment: then that one is used as it is.
IN_ENV := $(shell $(PYTHON) -c "import os, sys; print(int(sys.prefix != sys.base_prefix or bool(os.environ.get('CONDA_PREFIX'))))" 2>/dev/null)
ifeq ($(IN_ENV),1)
ENV_PYTHON := $(PYTHON)
ENV_TARGET :=
else
ENV_PYTHON := $(VENV)/bin/python
ENV_TARGET := $(VENV)/bin/python
endif

.PHONY: install install-dev demo test clean-venv

$(VENV)/bin/python:
	@echo "Creating the project's virtual environment $(VENV) with $(PYTHON) (once; delete it with make clean-venv)."
	$(PYTHON) -m venv $(VENV)

install: $(ENV_TARGET)
	$(ENV_PYTHON) -m pip install -q -e .

install-dev: $(ENV_TARGET)
	$(ENV_PYTHON) -m pip install -q -e ".[dev]"

# The whole series 01 -> 06 on generated MURA-like data, on the CPU.
demo: install
	$(ENV_PYTHON) -m mura_aug demo --workspace $(WORKSPACE)

test: install-dev
	$(ENV_PYTHON) -m pytest

clean-venv:
	rm -rf $(VENV)
