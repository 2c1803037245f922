# sentiment-pulse: `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA := data
OUT ?= out
REGISTRY ?= registry
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONUNBUFFERED := 1
# The Beam version, read from requirements.in (the one place it is written); deploy/deploy.mk uses it too.
BEAM_VERSION := $(shell sed -n 's/^apache-beam\[gcp\]==//p' requirements.in)
# Beam's Prism runner, the second engine the tests run the job on (tests/test_prism_runner.py):
# built by `go install` from the Beam Go module of the same version, whose hash deploy/engines.sum
# pins (Go checks it against its checksum database as well; the recipe checks it again).
PRISM_MODULE := github.com/apache/beam/sdks/v2
PRISM := .cache/beam/prism-$(BEAM_VERSION)/prism

.PHONY: help setup data train run test bench bench-live lock clean browser dashboard retrain prism screenshots

help:
	@echo "make run    - set up .venv, build the sample stream, run the job, print a SQL summary"
	@echo "make test   - set up if needed and run the whole test suite (TEST_WORKERS=2 processes)"
	@echo "make data   - fetch the labelled corpora (vaderSentiment 3.3.2 sdist) and build the sample stream"
	@echo "make train  - retrain the bundled model into models/bundled/"
	@echo "make retrain - challenger from corpora + the labels in OUT vs the current model of REGISTRY (promoted if better)"
	@echo "make bench  - benchmarks (bench/README.md): serving, live through the Pub/Sub emulator, a backlog on two engines"
	@echo "make bench-live - the live benchmark only (BENCH_MINUTES=10 for the soak, BENCH_RATES=100,500,1000)"
	@echo "make dashboard - the dashboard and review desk over the last run (http://127.0.0.1:8501)"
	@echo "make screenshots - the dashboard screenshots in docs/, taken in headless Chromium on the sample output"
	@echo "make dataflow, flex-template, flex-run, flink, worker-pool, image - deployment (deploy/README.md)"

# The virtual environment is rebuilt when the pins change.
$(VENV)/.stamp: requirements.lock setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; sentiment-pulse needs Python 3.11"; exit 1; }
	@echo "==> creating $(VENV) and installing pinned dependencies (about 3.5 minutes, 3.2 GB the first time)"
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --progress-bar on -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.stamp

$(DATA)/.stamp: $(VENV)/.stamp models/data.py connectors/sources/sample_stream.py
	$(PY) -m models.data fetch --dest $(DATA)
	$(PY) -m connectors.sources.sample_stream --data $(DATA) --out $(DATA)/sample_stream.jsonl
	touch $@

data: $(DATA)/.stamp

train: $(DATA)/.stamp
	$(PY) -m models.train --data $(DATA) --out models/bundled

# A challenger trained on the corpora plus the review desk's labels of OUT, promoted in the
# model registry REGISTRY (a directory or gs://...) only when measurably better (docs/models.md, Retraining).
retrain: $(DATA)/.stamp
	$(VENV)/bin/pulse retrain --output $(OUT) --registry $(REGISTRY) --data $(DATA)

run: $(DATA)/.stamp
	rm -rf $(OUT)
	$(VENV)/bin/pulse run --input $(DATA)/sample_stream.jsonl --output $(OUT)
	$(VENV)/bin/pulse summary --output $(OUT)
	@echo "==> open the dashboard: $(VENV)/bin/pulse dashboard --output $(OUT)   (then http://127.0.0.1:8501)"

# The dashboard over the last `make run` (or OUT=...).
dashboard: $(VENV)/.stamp
	$(VENV)/bin/pulse dashboard --output $(OUT)

# Debian's chromium and chromium-driver: the dashboard's end-to-end test drives a real headless
# browser (tests/test_dashboard_browser.py). Installed with apt when missing (root, Debian).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "==> installing Debian's chromium and chromium-driver (for the dashboard's browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: chromium and chromedriver are missing and cannot be installed here (needs root and apt):" \
	  "the dashboard's browser test will skip"; fi

# The screenshots in docs/ (dashboard-overview, -alerts, -compare, -review .png): the browser test
# run on the sample output, saving its screenshots there, each once its charts and tables are drawn.
screenshots: $(DATA)/.stamp browser
	PULSE_SCREENSHOT_DIR=docs $(VENV)/bin/pytest tests/test_dashboard_browser.py -q \
	  -k test_the_page_shows_the_tables_figures_and_labels_go_to_the_labels_table

# Two pytest-xdist workers by default (TEST_WORKERS=0 runs in one process; tests/conftest.py
# keeps each module, and the modules sharing the sample output, on one worker).
TEST_WORKERS ?= 2
test: $(DATA)/.stamp browser prism
	$(VENV)/bin/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

# The Prism runner binary (see PRISM above). Without Go the Prism tests skip, saying so.
prism: $(PRISM)
$(PRISM): deploy/engines.sum
	@if ! command -v go >/dev/null; then \
	  echo "note: Go is missing: Beam's Prism runner cannot be built and its tests will skip"; exit 0; fi; \
	set -eo pipefail; \
	want=$$(awk '$$1 == "$(PRISM_MODULE)" && $$2 == "v$(BEAM_VERSION)" {print $$3}' deploy/engines.sum); \
	[ -n "$$want" ] || { echo "error: deploy/engines.sum has no hash for $(PRISM_MODULE) v$(BEAM_VERSION)"; exit 2; }; \
	echo "==> building Beam's Prism runner v$(BEAM_VERSION) from the Go module (about a minute the first time)"; \
	got=$$(go mod download -json $(PRISM_MODULE)@v$(BEAM_VERSION) | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$$/\1/p'); \
	[ "$$got" = "$$want" ] || { echo "error: $(PRISM_MODULE) v$(BEAM_VERSION) hashes to $$got, deploy/engines.sum says $$want"; exit 2; }; \
	GOBIN=$(CURDIR)/$(dir $(PRISM)) go install -trimpath $(PRISM_MODULE)/go/cmd/prism@v$(BEAM_VERSION); \
	touch $@

# The live benchmark publishes for BENCH_MINUTES per rate (10 for the soak: make bench BENCH_MINUTES=10).
BENCH_MINUTES ?= 1
BENCH_RATES ?= 100,500,1000
# The backlog drained on the DirectRunner and on Prism (bench/backlog.py).
BENCH_BACKLOG ?= 30000

bench: $(DATA)/.stamp prism
	$(PY) -m bench.run_all --data $(DATA)
	$(PY) -m bench.live --rates $(BENCH_RATES) --minutes $(BENCH_MINUTES)
	$(PY) -m bench.registry_soak --data $(DATA) --minutes 5
	$(PY) -m bench.backlog --messages $(BENCH_BACKLOG)

bench-live: $(VENV)/.stamp
	$(PY) -m bench.live --rates $(BENCH_RATES) --minutes $(BENCH_MINUTES)

# Re-resolve requirements.in into requirements.lock (needs network to PyPI).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip==25.3
	.venv-lock/bin/pip install --quiet -r requirements.in
	.venv-lock/bin/pip freeze --all --exclude-editable | grep -v "^sentiment-pulse" > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(OUT) build *.egg-info

# `make dataflow` and `make flink` (deployment targets and their variables).
-include deploy/deploy.mk
