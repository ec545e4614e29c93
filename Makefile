# The two commands a newcomer runs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench tools clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m resilience.demo $(DEMO_ARGS)

## External tools the integration tests need (sslscan, prometheus, sslyze in its own venv).
tools: $(STAMP)
	bash scripts/ensure-tools.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check resilience tests examples bench
	$(VENV)/bin/mypy resilience

pytest: $(STAMP) tools
	bash scripts/pytest.sh $(PYTEST_ARGS)

test: lint pytest

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-sslyze .mypy_cache .pytest_cache .ruff_cache
