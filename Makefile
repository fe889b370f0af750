# Two entry points (README): `make demo` and `make test`. Each creates .venv and installs with pip,
# pinned by constraints.txt (torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache here).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[onnx,openvino,geo,test,docs]'
	@# Datumaro (test-only, tests/test_import.py) pins pillow~=12; it runs on our pillow: installed without its pins
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt datumaro
	touch $(STAMP)

.PHONY: install demo test bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/droneseg demo

# the report test renders report.html in headless Chromium, the cluster templates are checked by shellcheck:
# both installed here when we may (root, as in CI)
test: $(STAMP)
	@{ command -v chromium >/dev/null && command -v shellcheck >/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends chromium shellcheck >/dev/null; } || \
		echo "note: chromium and shellcheck are missing and could not be installed (not root, or no apt):" \
		"the report rendering and cluster template tests will skip; as root, make test installs them"
	@# the docs site (mkdocs.yml) first: a broken link or anchor fails here (not --quiet: it hides strict's warnings)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(abspath $(VENV))/site
	$(BIN)/python -m pytest -q --durations=20 --doctest-modules droneseg tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cache.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/ortho.py --out benchmarks/results/ortho-random.json
