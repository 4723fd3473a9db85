# creditwatch: `make run` and `make test` are the whole quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= settings.toml

.PHONY: run demo test install dev-install bench clean lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"

# Installs the exact versions from the lock file, then the project itself (editable).
$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed

dev-install: $(VENV)/.dev-installed

# Runs the worker on settings.toml with an SQLite file (the key comes from OPENROUTER_API_KEY).
run: install
	$(BIN)/creditwatch --config $(CONFIG) run

# The whole service for about a minute against a simulated account on loopback: no key, no
# settings, a throwaway database; notifications print to the terminal, the status page is up.
demo: install
	$(BIN)/creditwatch demo

test: dev-install lint
	$(BIN)/python -m pytest -n 4 -q

# Types, style and layers of the package (mypy --strict, ruff, import-linter); part of `make test`.
lint: dev-install
	$(BIN)/ruff check worker migrations
	$(BIN)/mypy worker
	$(BIN)/lint-imports --no-cache

bench: dev-install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
