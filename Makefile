# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: demo test lint bench clean graphviz-dot ui-browser image llm-demo serve-email

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

# The web-server tutorial's email assistant on fanwise.server (docs/server.md), two workers
# on 127.0.0.1:7242 over ./email-server.db; its OpenAPI page is /docs.
serve-email: $(VENV)/.dev
	$(BIN)/python -m uvicorn --app-dir examples email_server:app --host 127.0.0.1 \
		--port 7242 --workers 2

# Graphviz's `dot` renders `visualize()` images: installed when missing and root (as in CI);
# without it the rendering tests skip and say why.
graphviz-dot:
	@if ! command -v dot >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		graphviz >/dev/null || echo "graphviz (dot) not installed: rendering tests skip"; fi

# The system's headless Chromium, which Playwright drives in integration_tests/test_ui_browser.py
# (no browser download at run time): Debian's chromium-headless-shell, else its chromium;
# installed when missing and root (as in CI); without it those tests skip and say why.
ui-browser:
	@if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq; \
		if apt-cache policy chromium-headless-shell | grep -q 'Candidate: [0-9]'; \
		then browser=chromium-headless-shell; else browser=chromium; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$browser >/dev/null || echo "$$browser not installed: browser tests skip"; fi

test: $(VENV)/.dev graphviz-dot ui-browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q tests
	$(BIN)/python -m pytest -p no:xdist -q integration_tests

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# a map-reduce LLM sweep, offline (a fake OpenAI-compatible endpoint, a local ONNX scorer)
llm-demo: $(VENV)/.dev
	$(BIN)/python examples/llm_sweep.py

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/core_steps.py
	$(BIN)/python benchmarks/conditions.py

# The image the manifests in k8s/ run (k8s/README.md), tagged with the project's version.
IMAGE ?= fanwise:$(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)

image:
	docker build --tag $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
