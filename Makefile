# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what is
# missing first (OS packages when root, .venv, the project) and is idempotent.
TESSERA := .venv/bin/tessera
PROFILE ?= local

.PHONY: setup demo test test-fast lint up down status serve bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(TESSERA) --profile $(PROFILE) demo

# The tests use every profile, so they need every jar group.
test:
	@bash scripts/setup.sh spark broker s3
	$(TESSERA) test

# The unit tier only: no service started (tiers: docs/testing.md).
test-fast: setup
	$(TESSERA) test -m unit

# ruff (whole repository) and mypy (product code), configured in pyproject.toml; CI runs it too.
lint: setup
	@bash scripts/lint.sh

up: setup
	$(TESSERA) --profile $(PROFILE) up

down:
	$(TESSERA) --profile $(PROFILE) down

status:
	$(TESSERA) --profile $(PROFILE) status

# The HTTP API on the profile's serving.host:serving.port (docs at /docs); Ctrl-C stops it.
serve: up
	$(TESSERA) --profile $(PROFILE) serve

# The setup with what the benchmarks need too (wrk, the serving benchmark's load, when root).
bench:
	@bash scripts/setup.sh --bench
	$(TESSERA) bench

# Stops the services and deletes all local data (lake, Redis, MLflow) of the profile.
clean: down
	rm -rf .tessera/$(PROFILE)
