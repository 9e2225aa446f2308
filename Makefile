# Switchyard: `make serve` sets everything up and runs the stack; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_STAMP := .state/.apt-installed
# Where models and bentos live (BentoML's own variable); project-local by default.
export BENTOML_HOME ?= $(CURDIR)/.state/bentoml
export BENTOML_DO_NOT_TRACK ?= True
export SWITCHYARD_STATE_DIR ?= $(CURDIR)/.state/control
export SWITCHYARD_WORK_DIR ?= $(CURDIR)/build
export HF_HUB_OFFLINE := 1
HOST ?= 127.0.0.1
PORT ?= 3000
CONSOLE_PORT ?= 8501
# Longer than any client or proxy keeps an idle connection (bentos/api/worker.py: KEEP_ALIVE_S)
KEEP_ALIVE ?= 120
TOKEN_FILE := .state/admin-token

# Debian packages the tests and benchmarks use (installed only when missing).
APT_PACKAGES := $(shell cat deploy/apt-packages.txt 2>/dev/null)

.PHONY: help install system-deps models host-check serve test lint bench bento bento-gpu export clean docs docs-serve

help:
	@echo "make serve   set up (venv, packages, default models) and run the stack"
	@echo "make test    install and run the whole test suite"
	@echo "make lint    ruff + mypy on bentos/, models/ and admin/"
	@echo "make bench   optimization table and serving benchmarks (docs/)"
	@echo "make docs    the docs site into site/ (make docs-serve: on http://127.0.0.1:8000)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the declared dependencies change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

models: install
	$(PY) -m models build --all --if-missing
	$(PY) -m models list

# A random admin token, made once; export SWITCHYARD_ADMIN_TOKEN to use your own.
$(TOKEN_FILE):
	@mkdir -p $(dir $@)
	@$(PY) -c "import secrets; print(secrets.token_urlsafe(24))" > $@
	@chmod 600 $@

# The service in the foreground, the console beside it; Ctrl-C stops both.
# Beyond loopback, every person signs in with their own token: the console never signs visitors in then.
host-check:
	@case "$(HOST)" in 127.*|localhost|::1) ;; *) if [ -z "$$SWITCHYARD_ADMIN_TOKENS" ]; then \
	  echo "make serve: HOST=$(HOST) opens the console and admin API beyond this machine; set SWITCHYARD_ADMIN_TOKENS (a token per person, README: Who may do what) first" >&2; exit 2; fi;; esac

serve: host-check models $(TOKEN_FILE)
	@echo "API:         http://$(HOST):$(PORT)   (OpenAPI /v1/openapi.json, health /v1/health)"
	@echo "OIP gRPC:    $(HOST):$${SWITCHYARD_GRPC_PORT:-3001}"
	@echo "playground:  http://$(HOST):$(PORT)/playground/"
	@echo "console:     http://$(HOST):$(CONSOLE_PORT)"
	@echo "admin token: $${SWITCHYARD_ADMIN_TOKEN:-$$(cat $(TOKEN_FILE))}   (also in $(TOKEN_FILE))"
	@export SWITCHYARD_ADMIN_TOKEN=$${SWITCHYARD_ADMIN_TOKEN:-$$(cat $(TOKEN_FILE))} \
	  SWITCHYARD_SERVICE_URL=http://$(HOST):$(PORT) STREAMLIT_BROWSER_GATHER_USAGE_STATS=false; \
	$(VENV)/bin/streamlit run admin/app.py --server.headless true --server.address $(HOST) --client.toolbarMode minimal \
	  --server.port $(CONSOLE_PORT) >.state/console.log 2>&1 & console=$$!; \
	trap "kill $$console 2>/dev/null" EXIT INT TERM; \
	$(VENV)/bin/bentoml serve service:Switchyard --host $(HOST) --port $(PORT) --timeout-keep-alive $(KEEP_ALIVE)

# In a random order, its seed in the header; rerun one order with PYTEST_ARGS=--randomly-seed=N.
# PYTEST_ARGS='-p no:randomly' runs in file order.
test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The docs site: its reference pages are written from the code first (docs/gen_reference.py).
docs: install
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy bentos models admin

# Optimization table (docs/optimization.md), then serving against its peers (docs/benchmarks.md).
# wrk comes with system-deps; the peers (LitServe, FastAPI, stock BentoML) with install.
bench: install system-deps models
	$(PY) bench/optimization.py
	$(PY) bench/image_deps.py >/dev/null
	$(PY) bench/canary_sim.py >/dev/null
	$(PY) bench/serving.py

# The bento: service.py, bentos/, switchyard.yaml, the default model versions plus every version
# deployed on an endpoint now (deploy/bento_models.py), and serving-only packages (no torch).
bento: models
	$(PY) deploy/bento_models.py build/bentofile.yaml
	$(VENV)/bin/bentoml build -f build/bentofile.yaml --output tag .

# The same bento with onnxruntime-gpu and the CUDA provider required (deploy/gpu_bentofile.py).
bento-gpu: models
	$(PY) deploy/gpu_bentofile.py build/bentofile.gpu.yaml
	$(VENV)/bin/bentoml build -f build/bentofile.gpu.yaml --output tag .

# The latest bento as one archive, models included: `bentoml import build/switchyard.bento` elsewhere.
export: bento
	@mkdir -p build
	$(VENV)/bin/bentoml export switchyard:latest $(CURDIR)/build/switchyard.bento

clean:
	rm -rf build .state .pytest_cache .mypy_cache .ruff_cache
