# One command per check, the same locally and in CI. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck protos check-protos bench clean

$(STAMP): pyproject.toml client/pyproject.toml client/VERSION
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pkgloader needs Python 3.11 or newer as $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "python venv is missing: apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e client -e '.[dev]'
	@touch $@

## Run the service on its embedded default: 127.0.0.1:50051, cache in ~/.cache/pkgloader.
serve: $(STAMP)
	$(BIN)/pkgloader serve

## Run every check: stubs current, lint, types, the whole test suite.
test: $(STAMP) check-protos lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check service client/pkgloader_client tests scripts
	$(BIN)/mypy service/pkgloader

## Regenerate the client stubs from protos/.
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist service/*.egg-info client/*.egg-info
