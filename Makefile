# The two commands a newcomer runs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
PYTEST_ARGS ?=
# What lint checks: ruff over all of it, mypy --strict over the typed code (bench/ needs its
# peer libraries installed to type-check: see `make bench`).
RUFF_PATHS := resilience tests examples bench scripts
MYPY_PATHS := resilience tests examples scripts

.PHONY: demo test lint pytest bench tools clean-install clean

# One venv; each target installs only the extras it needs (a peer library of the benchmark
# that fails to install must not break `make demo`).
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

## The demo lives in examples/demo/ (not in the installed package); run from this directory.
demo: $(VENV)/.demo
	$(PY) -m examples.demo $(DEMO_ARGS)

## A 3-member etcd cluster and five nodes on loopback, failures on purpose, OK/FAIL checks
## (examples/cluster/, docs/cluster.md). Needs etcd: Debian package etcd-server (`make tools`).
CLUSTER_ARGS ?=
.PHONY: cluster-demo
cluster-demo: $(VENV)/.demo
	$(PY) -m examples.cluster $(CLUSTER_ARGS)

## Two processes sharing one circuit through a local redis-server (examples/shared_circuit/,
## docs/shared-state.md). Needs redis-server: Debian package redis-server (`make tools`).
.PHONY: shared-demo
shared-demo: $(VENV)/.demo
	$(PY) -m pip install -q -e '.[redis]'
	$(PY) -m examples.shared_circuit

## External tools the integration tests need (sslscan, prometheus, sslyze in its own venv,
## redis-server, etcd).
## Installs what it can; outside CI a missing tool only skips the tests that need it.
tools: $(VENV)/.test
	bash scripts/ensure-tools.sh

lint: $(VENV)/.test
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/mypy --strict $(MYPY_PATHS)

## The wheel, installed alone into a fresh .venv-clean (runtime dependencies only), works.
clean-install: $(VENV)/.created
	PYTHON=$(PYTHON) PIP_PY=$(PY) bash scripts/clean-install.sh

pytest: $(VENV)/.test tools
	bash scripts/pytest.sh $(PYTEST_ARGS)

test: lint clean-install pytest

bench: $(VENV)/.bench $(VENV)/.test
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-sslyze .venv-clean .mypy_cache .pytest_cache .ruff_cache dist build
