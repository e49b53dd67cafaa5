.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := policy authn sshd relay gateway
B ?=
# pytest-xdist workers: the tests mostly wait on processes and sockets, so more workers than the
# two cores of a small machine pay (figures in docs/testing.md). T: extra pytest arguments.
WORKERS ?= 3
T ?=
PYTEST := $(VENV)/bin/pytest -q -n $(WORKERS) --dist loadgroup
FUZZ_RUNS ?= 100000
export FUZZ_RUNS

help:      ## List targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z0-9-]+:.*## /{printf "  %-10s %s\n",$$1,$$2}' $(MAKEFILE_LIST)

sync:      ## Create or refresh .venv from requirements.lock (hash-checked) and every member
	@./scripts/bootstrap

lock:      ## Re-resolve dependencies; rewrite requirements.lock and the per-image locks (needs uv)
	uv lock
	uv export --format requirements-txt --all-groups --no-emit-workspace --no-header -o requirements.lock
	for m in $(SERVICES) cli; do uv export --format requirements-txt --package meshssh-$$m --no-dev \
	  --no-emit-workspace --no-header -q -o deploy/docker/requirements/$$m.lock; done
	uv export --format requirements-txt --package meshssh-cli --package meshssh-agent --package meshssh-sshd \
	  --package meshssh-relay --no-dev --no-emit-workspace --no-header -q \
	  -o deploy/docker/requirements/peer.lock

images:    ## One image per service, built from the root (needs a Docker engine)
	for m in $(SERVICES) cli peer; do docker build -f deploy/docker/$$m.Dockerfile -t meshssh-$$m .; done

run: sync  ## Start the whole system locally on embedded defaults (Ctrl-C stops it)
	$(PY) scripts/run_local.py

fmt: sync  ## Format and apply safe fixes
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

lint: sync ## Format check and lint
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

typecheck: sync ## mypy --strict on libs, services and cli
	$(VENV)/bin/mypy libs/common/src libs/testkit/src services/*/src cli/src

test: lint typecheck ## Lint, type-check, then every test in parallel (real nats-server, real OpenSSH)
	$(PYTEST) $(T)

e2e: sync  ## Whole-system tests only
	$(PYTEST) tests/e2e $(T)

bench: sync ## Benchmarks (all, or B=<name> for bench/<name>.py)
	@if [ -n "$(B)" ]; then $(PY) bench/$(B).py; else for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done; fi

fuzz: sync ## Each atheris target in fuzz/ for FUZZ_RUNS runs (default 100000); crashes in .fuzz/
	$(PY) fuzz/fuzz_all.py

clean:     ## Remove .venv and run state
	rm -rf $(VENV) .run .fuzz .mypy_cache .ruff_cache .pytest_cache


.PHONY: help sync lock images run fmt lint typecheck test e2e bench fuzz clean
