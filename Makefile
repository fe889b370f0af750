# Two entry points (README): `make demo` and `make test`. Each creates .venv and installs with pip,
# pinned by constraints.txt (torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache here).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[onnx,test]'
	touch $(STAMP)

.PHONY: install demo test bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/droneseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules droneseg tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cache.py
