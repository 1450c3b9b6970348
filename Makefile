# Two entry points on a fresh machine: `make run` (simulator + plant, live table) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tickerplant demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The kernels are also run as plain Python (NUMBA_DISABLE_JIT=1): same code, same answers. The
# million-message and namespace tests would take minutes that way and add nothing there.
test: lint
	$(BIN)/pytest -q
	NUMBA_DISABLE_JIT=1 $(BIN)/pytest -q -m "not slow and not netns"

bench: $(STAMP)
	$(BIN)/python bench/feed_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
