# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml package.json package-lock.json
	$(PYTHON) -m venv $(VENV)
	@# setuptools >= 77 reads pyproject's SPDX licence (torch asks for < 82); tests/test_viewer.py builds the package with the venv's own
	$(VENV)/bin/pip install --quiet --upgrade pip 'setuptools>=77,<82'
	$(VENV)/bin/pip install --quiet -e '.[test,ray,bench]'
	@# the glTF validator the tests run comes from the npm registry (package.json); the report's 3-D viewer
	@# ships inside the pipeline package and needs no npm
	if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: GLB validation tests are skipped"; fi
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hotmesh demo

test: install
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests

bench: install
	$(VENV)/bin/python bench/run_bench.py --sets spot_render --tag bench-local
