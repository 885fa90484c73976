# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,ray]'
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hotmesh demo

test: install
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

bench: install
	$(VENV)/bin/python bench/run_bench.py
