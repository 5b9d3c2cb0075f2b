# The two quick-start commands are `make demo` and `make test`; every
# other target is for developers. Everything runs inside .venv, which the
# first target that needs it creates from scratch.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint typecheck bench bench-quick clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

## Run the demo against an embedded etcd it starts itself.
demo: $(STAMP)
	$(BIN)/etcdroute demo

## Run every test: the default suite, the slow fault suite, then the
## property tests again with the thorough hypothesis profile.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]
	ETCDROUTE_HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q \
	    tests/test_properties.py tests/test_properties_concurrent.py
	$(BIN)/etcdroute bench --quick --output benchmarks/results/tmp/ci-quick.json

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]

## Contention benchmark: the recorded full run, and the quick CI set.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_contention.py --full --output benchmarks/results/full.json

bench-quick: $(STAMP)
	$(BIN)/etcdroute bench --quick --output benchmarks/results/tmp/quick.json

lint: $(STAMP)
	$(BIN)/ruff check etcdroute tests benchmarks
	$(BIN)/ruff format --check etcdroute tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
