# One entry point for developers and CI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check carerix_smtp tests bench
	$(BIN)/ruff format --check carerix_smtp tests bench
	$(BIN)/mypy carerix_smtp

# Compiled first, as pip compiles an installed package (with PYTHONDONTWRITEBYTECODE
# set, every cxsmtp start would otherwise compile the changed modules again).
bench: $(STAMP)
	$(BIN)/python -m compileall -q carerix_smtp
	$(BIN)/python bench/run_all.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
