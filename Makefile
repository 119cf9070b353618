# The README's commands. Everything runs inside $(VENV), created on first use.
PYTHON ?= python3
VENV   ?= .venv
# An exact pin: on these machines torch==2.13.0 installs from a local CPU wheel, while an unpinned torch pulls
# several GB of CUDA packages. Override for a CUDA machine, e.g. `make test TORCH="torch==2.13.0 --index-url ..."`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --quiet

DEMO_RAW    ?= data/demo/raw
DEMO_PACKED ?= data/demo/packed
DEMO_N      ?= 2000

.PHONY: demo test test-fast bench tools lint format clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

$(DEMO_RAW)/.complete: | $(VENV)/.installed
	$(BIN)/gand demo-data $(DEMO_RAW) --n $(DEMO_N)
	touch $@

$(DEMO_PACKED)/manifest.json: $(DEMO_RAW)/.complete
	$(BIN)/gand pack $(DEMO_RAW) $(DEMO_PACKED) --resolutions 32,64 --min-side 128

## make demo: built-in landscapes -> packed shards -> a short DCGAN run -> runs/quickstart/samples/*.png
demo: $(VENV)/.installed $(DEMO_PACKED)/manifest.json
	$(BIN)/gand train configs/quickstart.yaml
	@echo "samples: runs/quickstart/samples/  (run 'make demo' again: it resumes from the last checkpoint)"

## make test: the whole suite, unit and integration (installs Prometheus + promtool for the metrics tests)
test: $(VENV)/.installed-test tools
	$(BIN)/python -m pytest

## make test-fast: the unit tests only (in-process, no external tools, no subprocesses): about a minute
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit -q

## make bench: every benchmark, CPU-sized (under 11 minutes on 2 cores): tables, and JSON in bench/results/
## (bench/memory.py measures GPU memory; on a CPU machine it prints the planner's predictions. Numbers: docs/benchmarks.md)
bench: $(VENV)/.installed-test
	$(BIN)/python bench/pack.py --images 120 --workers 2
	$(BIN)/python bench/load.py --images 120 --workers 2
	$(BIN)/python bench/trainstep.py --configs dcgan64,can256 --repeats 3
	$(BIN)/python bench/checkpoint.py --configs dcgan64 --batch 2
	$(BIN)/python bench/metrics.py --blocks 10
	$(BIN)/python bench/memory.py --batches 64,128 --steps 5

# System tools the tests run for real. Debian's prometheus package brings promtool; it needs root (CI is root).
# prometheus-operator's CRD schemas (for the PodMonitor and PrometheusRule tests) come from the npm registry.
tools: tests/k8s/node_modules/.package-lock.json
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } || echo "promtool missing: sudo apt-get install prometheus (the metrics tests need it)"; }

tests/k8s/node_modules/.package-lock.json: tests/k8s/package-lock.json
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; }
	cd tests/k8s && npm ci --no-audit --no-fund --loglevel=error

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gand tests bench deploy
	$(BIN)/ruff format --check gand tests bench deploy

format: $(VENV)/.installed-test
	$(BIN)/ruff format gand tests bench deploy
	$(BIN)/ruff check --fix gand tests bench deploy

clean-demo:
	rm -rf data/demo runs/quickstart
