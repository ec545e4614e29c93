# The two commands a newcomer runs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint pytest bench tools clean

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

demo: $(VENV)/.demo
	$(PY) -m resilience.demo $(DEMO_ARGS)

## External tools the integration tests need (sslscan, prometheus, sslyze in its own venv).
tools: $(VENV)/.test
	bash scripts/ensure-tools.sh

lint: $(VENV)/.test
	$(VENV)/bin/ruff check resilience tests examples bench
	$(VENV)/bin/mypy resilience

pytest: $(VENV)/.test tools
	bash scripts/pytest.sh $(PYTEST_ARGS)

test: lint pytest

bench: $(VENV)/.bench $(VENV)/.test
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-sslyze .mypy_cache .pytest_cache .ruff_cache
