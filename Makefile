# Quick start: `make demo`, then `make test`. Everything is installed into this folder (.venv, .driver,
# node_modules); the first run takes a minute or two, later runs skip what is already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := node_modules/.bin
TURSODB := node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb
PYRIGHT := $(BIN)/pyright
export TURSODB_BIN := $(CURDIR)/$(TURSODB)

# SQLAlchemy releases tested besides the one pinned in requirements.txt: the newest 2.0 and the newest 2.1. Each gets
# its own venv (.venv-sqlalchemy-VERSION, git-ignored) with requirements.txt and that SQLAlchemy instead of the pin.
SQLALCHEMY_VERSIONS := 2.0.58 2.1.9
SQLALCHEMY_VENVS := $(SQLALCHEMY_VERSIONS:%=.venv-sqlalchemy-%)
# What test-sqlalchemy-versions checks in each of them: the dialect, its tests and the typing snippet.
SQLALCHEMY_FILES := turso/sqlalchemy_sync_aio.py tests/test_sqlalchemy.py tests/typing/check_sqlalchemy.py

.PHONY: setup test typecheck unit test-sqlalchemy-versions demo demo-sqlalchemy bench bench-smoke clean

setup: $(VENV)/.installed .driver/.linked $(TURSODB) $(PYRIGHT)

$(VENV)/.installed: requirements.txt requirements-bench.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-bench.txt
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

test: setup typecheck unit test-sqlalchemy-versions

typecheck: setup
	$(PY) -m mypy turso/lib_sync_aio.py turso/sqlalchemy_sync_aio.py
	$(PY) -m mypy tests examples benchmarks
	$(PYRIGHT) --pythonpath $(PY)
	$(PY) -m mypy.stubtest turso.lib_sync_aio --allowlist stubtest-allowlist.txt

unit: setup
	$(PY) -m pytest

demo: setup
	$(PY) examples/demo.py

# SQLAlchemy's asyncio engine on two replicas of one database (sqlite+aioturso_sync://).
demo-sqlalchemy: setup
	$(PY) examples/sqlalchemy_demo.py

# The pyright config of one extra venv: the project's strict settings, that venv's packages, the SQLAlchemy files.
.venv-sqlalchemy-%/.installed: requirements.txt | .driver/.linked
	@test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	grep -v '^SQLAlchemy==' requirements.txt | $(@D)/bin/python -m pip install --quiet -r /dev/stdin SQLAlchemy==$*
	$(@D)/bin/python scripts/link_driver.py
	$(@D)/bin/python -c 'import json, sys; print(json.dumps({"extends": "../pyrightconfig.json", "venvPath": "..", \
		"venv": sys.argv[1], "executionEnvironments": [{"root": ".."}], "include": ["../" + f for f in sys.argv[2:]]}))' \
		$(@D) $(SQLALCHEMY_FILES) > $(@D)/pyrightconfig.json
	@touch $@

# The SQLAlchemy tests and the typing snippet (mypy --strict, pyright strict) against each release in
# SQLALCHEMY_VERSIONS; `make unit` and `make typecheck` cover the pinned one.
test-sqlalchemy-versions: setup $(SQLALCHEMY_VENVS:%=%/.installed)
	@set -e; for venv in $(SQLALCHEMY_VENVS); do \
		echo "== $$venv: $$($$venv/bin/python -c 'import sqlalchemy; print("SQLAlchemy", sqlalchemy.__version__)')"; \
		$$venv/bin/python -m mypy --cache-dir $$venv/.mypy_cache $(SQLALCHEMY_FILES); \
		$(PYRIGHT) -p $$venv/pyrightconfig.json; \
		$$venv/bin/python -m pytest -p no:cacheprovider tests/test_sqlalchemy.py; \
	done

# The full benchmark (a few minutes): table on stdout, benchmarks/results/results.json and chart.png.
bench: setup
	$(PY) -m benchmarks

# A tiny run that only proves the benchmark still works (CI runs it; no timing is judged).
bench-smoke: setup
	$(PY) -m benchmarks --smoke

clean:
	rm -rf $(VENV) $(SQLALCHEMY_VENVS) .driver node_modules .mypy_cache .pytest_cache
	find turso -maxdepth 1 -type l -delete
