# Quick start: `make demo`, then `make test`. Everything is installed into this folder (.venv, .driver,
# node_modules); the first run takes a minute or two, later runs skip what is already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := node_modules/.bin
TURSODB := node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb
PYRIGHT := $(BIN)/pyright
export TURSODB_BIN := $(CURDIR)/$(TURSODB)

.PHONY: setup test typecheck unit test-wheel test-pyturso wheel demo bench bench-smoke clean

setup: $(VENV)/.installed .driver/.linked $(TURSODB) $(PYRIGHT)

$(VENV)/.installed: requirements.txt requirements-bench.txt requirements-release.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-bench.txt -r requirements-release.txt
	@touch $@

.driver/.installed: requirements-driver.txt | $(VENV)/.installed
	rm -rf .driver
	$(PY) -m pip install --quiet --no-deps --target .driver -r requirements-driver.txt
	@touch $@

.driver/.linked: .driver/.installed scripts/link_driver.py
	$(PY) scripts/link_driver.py
	@touch $@

$(TURSODB) $(PYRIGHT): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(TURSODB) $(PYRIGHT)

test: setup typecheck unit test-wheel test-pyturso

typecheck: setup
	$(PY) -m mypy turso/lib_sync_aio.py
	$(PY) -m mypy tests examples benchmarks scripts
	$(PYRIGHT) --pythonpath $(PY)
	$(PY) -m mypy.stubtest turso.lib_sync_aio --allowlist stubtest-allowlist.txt

unit: setup
	$(PY) -m pytest

# pyturso's released wheels (one per platform it publishes), rebuilt with our committed turso/ files and the local
# version 0.8.3+syncaio.1, into dist/. The released wheels are downloaded and digest-checked at build time.
# Nothing is rebuilt when dist/ already holds wheels of the same files (dist/.built records them).
wheel: $(VENV)/.installed
	$(PY) scripts/build_wheels.py

# The linux x86_64 wheel installed in a fresh venv (build/wheel-venv) with only requirements.txt: the whole suite
# against it from a copy of tests/ outside the checkout, the typing snippets, pip check, and a clean uninstall.
test-wheel: setup wheel
	$(PY) scripts/test_installed_wheel.py

# pyturso's own tests for this module (tests/test_database_sync_aio.py of the 0.8.3 sdist, fetched and digest-checked
# into build/pyturso-tests), run as they are against our module, with their sync servers started by our tursodb.
test-pyturso: setup build/pyturso-tests/.extracted
	$(PY) scripts/run_pyturso_tests.py

build/pyturso-tests/.extracted: scripts/run_pyturso_tests.py scripts/pyturso_release.py | $(VENV)/.installed
	$(PY) scripts/run_pyturso_tests.py --extract
	@touch $@

demo: setup
	$(PY) examples/demo.py

# The full benchmark (a few minutes): table on stdout, benchmarks/results/results.json and chart.png.
bench: setup
	$(PY) -m benchmarks

# A tiny run that only proves the benchmark still works (CI runs it; no timing is judged).
bench-smoke: setup
	$(PY) -m benchmarks --smoke

clean:
	rm -rf $(VENV) .driver node_modules .mypy_cache .pytest_cache build dist
	find turso -maxdepth 1 -type l -delete
