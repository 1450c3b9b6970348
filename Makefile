# Two entry points on a fresh machine: `make run` (simulator + plant, live table) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Compiles every kernel into numba's cache (~20 s), so that the first `make run` loads them and
# shows live figures at once. It needs multicast on loopback, as the demo does: should it fail,
# the install stands and the first run compiles instead.
WARM   := $(BIN)/python -m tickerplant.warm

.PHONY: run test lint bench clean warm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	-$(WARM)
	touch $(STAMP)

# Again after editing a kernel: a kernel's cache is keyed by its file.
warm: $(STAMP)
	$(WARM)

run: $(STAMP)
	$(BIN)/tickerplant demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/mypy

# The kernels are also run as plain Python (NUMBA_DISABLE_JIT=1): same code, same answers. The
# many-message and namespace tests would take minutes that way and add nothing there.
test: lint
	$(BIN)/pytest -q
	NUMBA_DISABLE_JIT=1 $(BIN)/pytest -q -m "not slow and not netns"

bench: $(STAMP)
	$(BIN)/python bench/feed_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
