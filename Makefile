# The README's two commands: `make run` (install what is missing, open the app with demo traffic)
# and `make test` (install what is missing, run the whole default test suite).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SLOW_TIMEOUT ?= 2400

.PHONY: setup run test test-slow lint dist screenshots bench clean

setup:
	@./scripts/setup.sh

run: setup
	$(VENV)/bin/anomalydesk app --demo

lint: setup
	$(VENV)/bin/ruff check src tests clients/python
	$(VENV)/bin/lint-imports

test: setup lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q
	@if [ -f clients/js/package.json ]; then cd clients/js && node --test test/; fi

test-slow: setup
	QT_QPA_PLATFORM=offscreen timeout $(SLOW_TIMEOUT) $(PY) -m pytest -q -m slow

bench: setup
	$(VENV)/bin/anomalydesk bench all --json

# Linux: dist/anomalydesk_<version>_amd64.deb and the portable tarball (docs/installers.md)
dist: setup
	./scripts/build_dist.sh

clean:
	rm -rf build dist .pytest_cache
