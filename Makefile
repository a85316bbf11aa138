# The two commands of the README. Both install what they need first.
PYTHON ?= python3
# The demo writes only into a folder it created itself (it refuses a folder holding other data).
WORKSPACE ?= ./demo_workspace

.PHONY: install install-dev demo test

install:
	$(PYTHON) -m pip install -q -e .

install-dev:
	$(PYTHON) -m pip install -q -e ".[dev]"

# The whole series 01 -> 06 on generated MURA-like data, on the CPU.
demo: install
	$(PYTHON) -m mura_aug demo --workspace $(WORKSPACE)

test: install-dev
	$(PYTHON) -m pytest
