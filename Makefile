# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: demo test lint bench clean graphviz-dot image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[progress]'
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

# Graphviz's `dot` renders `visualize()` images: installed when missing and root (as in CI);
# without it the rendering tests skip and say why.
graphviz-dot:
	@if ! command -v dot >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		graphviz >/dev/null || echo "graphviz (dot) not installed: rendering tests skip"; fi

test: $(VENV)/.dev graphviz-dot
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q tests
	$(BIN)/python -m pytest -p no:xdist -q integration_tests

lint: $(VENV)/.dev
	$(BIN)/ruff check .

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/core_steps.py
	$(BIN)/python benchmarks/conditions.py

# The image the manifests in k8s/ run (k8s/README.md), tagged with the project's version.
IMAGE ?= fanwise:$(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)

image:
	docker build --tag $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
