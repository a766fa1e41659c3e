# One command per check, the same locally and in CI. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Node tools of the tests (buf, a Node.js gRPC client), installed by `npm ci` from the committed
# lock file into tests/node/node_modules, never globally.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
BUF := $(NODE_DIR)/node_modules/.bin/buf

.PHONY: lock serve test monitoring-tools lint typecheck protos check-protos check-buf node bench clean image-test

# Third-party packages come only from the lock file, each checked against its sha256, so a
# tampered or silently changed package fails the install; then our two distributions, editable.
# --no-deps: the lock already holds every dependency, and pip 23.2 resolving them again failed
# the install outright ("must have their versions pinned") for pytest-cov's coverage[toml] the
# day coverage 7.18.0 came out, though coverage==7.17.5 is locked; `pip check` then confirms
# that the lock holds every dependency of everything installed, ours included.
$(STAMP): pyproject.toml client/pyproject.toml client/VERSION requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pkgloader needs Python 3.11 or newer as $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "python venv is missing: apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e client -e .
	$(BIN)/python -m pip check
	@touch $@

## Regenerate the lock files (with hashes) from pyproject.toml: the one command for it.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 --native-tls \
	--no-emit-package pkgloader --no-emit-package pkgloader-client
lock: $(STAMP)
	$(LOCK) requirements/dev.in -o requirements/dev.lock
	$(LOCK) requirements/runtime.in -o requirements/runtime.lock

## Run the service on its embedded default: 127.0.0.1:50051, cache in ~/.cache/pkgloader.
serve: $(STAMP)
	$(BIN)/pkgloader serve

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or newer"; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	@touch $@

## Install the Node tools of the tests (skipped while node_modules matches the lock file).
node: $(NODE_STAMP)

## Run every check: stubs current, lint, types, proto lint and compatibility, the whole test suite.
## Coverage of service/pkgloader and client/pkgloader_client (pyproject's [tool.coverage]) that the
## suite must keep: set just below the figure measured when it was set (see README, Development).
## Raise it when coverage rises; never lower it to make a change pass.
COVERAGE_FLOOR := 89

test: $(STAMP) check-protos lint check-buf $(NODE_STAMP) monitoring-tools
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR)

## promtool and prometheus (Debian's prometheus package) for the alert and dashboard tests. Only
## the binaries are used: the tests start their own Prometheus on 127.0.0.1.
monitoring-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } || \
		{ echo "install Debian's prometheus package for promtool and prometheus"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check service client/pkgloader_client tests scripts bench
	$(BIN)/ruff format --check service client/pkgloader_client tests scripts bench
	$(BIN)/mypy service/pkgloader
	$(BIN)/mypy --strict client/pkgloader_client
	$(BIN)/mypy tests

## Regenerate the client stubs from protos/.
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

## buf lint, then buf breaking: protos/ as they are now against the previous commit, so a commit
## cannot break the wire contract silently. The first commit (or one before protos/ existed) has
## nothing to compare against; a shallow clone is deepened by one commit to get its parent.
check-buf: $(NODE_STAMP)
	$(BUF) lint protos
	@if [ "$$(git rev-parse --is-shallow-repository)" = true ]; then \
		git fetch --quiet --deepen=1 2>/dev/null || true; fi; \
	base=$$(git rev-parse --quiet --verify 'HEAD~1^{commit}') || base=; \
	if [ -z "$$base" ]; then \
		echo "buf breaking: HEAD has no parent commit; nothing to compare against"; \
	elif ! git ls-tree -r --name-only "$$base" -- protos | grep -q '\.proto$$'; then \
		echo "buf breaking: $$base has no protos; nothing to compare against"; \
	else \
		echo "buf breaking: protos/ against $$base"; \
		$(BUF) breaking protos --against "$$(git rev-parse --git-common-dir)#ref=$$base,subdir=protos"; \
	fi

## Build the container image with podman (as root) and run it, alone and as the k8s/ manifests.
image-test: $(STAMP)
	bash scripts/image-test

## Run the benchmarks (about 15 minutes) and write bench/RESULTS.md. h2load (Debian's
## nghttp2-client) drives the request-rate figures; without it Python clients do, and measure
## mostly themselves.
bench: $(STAMP)
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; } \
		|| echo "h2load unavailable: the rate figures fall back to Python clients"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist service/*.egg-info client/*.egg-info
