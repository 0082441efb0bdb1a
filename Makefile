# Quick start: `make demo`, then `make test`. Everything is installed into this folder (.venv, .driver,
# node_modules); the first run takes a minute or two, later runs skip what is already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := node_modules/.bin
TURSODB := node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb
PYRIGHT := $(BIN)/pyright
RUFF := $(VENV)/bin/ruff
export TURSODB_BIN := $(CURDIR)/$(TURSODB)

# The CPython versions `make test` runs the whole suite on (JOBS suites at once, see `test` below): from pyturso's floor
# to the newest release we test. Each has its own venv, .venvs/X.Y, with the pinned requirements; the driver in .driver is an abi3 wheel serving them all.
PYTHON_VERSIONS ?= 3.10 3.11 3.12 3.13
# The versions the type gates (mypy, pyright, stubtest) run at: pyturso's floor and the newest.
TYPECHECK_PYTHON_VERSIONS ?= 3.10 3.13
# .venvs/X.Y is ready to test: packages installed, this checkout and the driver on its path.
venv_ready = $(foreach version,$(1),.venvs/$(version)/.linked)
# Stamps of finished set-up steps: keep them (make would delete them as intermediate files and redo the step).
.PRECIOUS: .venvs/%/.installed .venvs/%/.linked

# SQLAlchemy releases tested besides the one pinned in requirements.txt: the newest 2.0 and the newest 2.1. Each gets
# its own venv (.venv-sqlalchemy-VERSION, git-ignored) with requirements.txt and that SQLAlchemy instead of the pin.
SQLALCHEMY_VERSIONS := 2.0.58 2.1.9
SQLALCHEMY_VENVS := $(SQLALCHEMY_VERSIONS:%=.venv-sqlalchemy-%)
# What test-sqlalchemy-versions checks in each of them: the dialect, its tests and the typing snippet.
SQLALCHEMY_FILES := turso/sqlalchemy_sync_aio.py tests/test_sqlalchemy.py tests/typing/check_sqlalchemy.py

.PHONY: setup test checks-ready typecheck lint unit test-sqlalchemy-versions test-wheel test-pyturso wheel demo demo-sqlalchemy server \
	bench bench-smoke bench-before clean

setup: $(VENV)/.installed .driver/.linked $(TURSODB) $(PYRIGHT)

$(VENV)/.installed: requirements.txt requirements-bench.txt requirements-lint.txt requirements-release.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-bench.txt -r requirements-lint.txt \
		-r requirements-release.txt
	@touch $@

# The interpreter for X.Y: PYTHON_X.Y if set (`make test PYTHON_3.13=/usr/bin/python3.13`), else pyenv's newest
# installed X.Y (`pyenv latest X.Y`). Benchmarks are in the type gates, so every test venv has their packages too.
.venvs/%/.installed: requirements.txt requirements-bench.txt requirements-release.txt
	@python="$(PYTHON_$*)"; \
	if test -z "$$python" && version=$$(pyenv latest $* 2>/dev/null); then \
		python="$$(pyenv prefix "$$version")/bin/python"; \
	fi; \
	if ! test -x "$$python"; then \
		echo "make: no CPython $* found: install it (pyenv install $*) or name it (make PYTHON_$*=/path/to/python$*)." >&2; \
		echo "make: the test suite runs on every CPython in PYTHON_VERSIONS ($(PYTHON_VERSIONS))." >&2; \
		exit 1; \
	fi; \
	"$$python" -c 'import sys; sys.exit(sys.implementation.name != "cpython" or "%d.%d" % sys.version_info[:2] != "$*")' \
		|| { echo "make: $$python is not CPython $*." >&2; exit 1; }; \
	test -x .venvs/$*/bin/python || { echo "$$python -m venv .venvs/$*"; "$$python" -m venv .venvs/$*; }
	.venvs/$*/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-bench.txt \
		-r requirements-release.txt
	@touch $@

# link_driver.py puts this checkout on the import path of the interpreter that runs it: one .pth per venv.
.venvs/%/.linked: .venvs/%/.installed .driver/.installed scripts/link_driver.py
	.venvs/$*/bin/python scripts/link_driver.py
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

# `make test`: the lint and the type gates, then every other check: the installed wheel, the suite on each Python in
# PYTHON_VERSIONS, the SQLAlchemy releases and pyturso's own tests. What they need is made first. scripts/run_checks.py
# runs them JOBS at once, the longest first (the order of CHECKS). JOBS is one more than the cores by default (3 on two
# cores): a suite waits far more than it computes, but all seven at once stretched the statements and deadlines the
# tests prove behaviour with. `make test JOBS=1` runs them one after the other, `make test JOBS=4` four at once.
CHECKS = test-wheel $(PYTHON_VERSIONS:%=unit-%) test-sqlalchemy-versions test-pyturso
JOBS ?=
RUN_CHECKS = $(PY) scripts/run_checks.py $(if $(JOBS),--jobs $(JOBS))
test: setup lint typecheck checks-ready
	$(RUN_CHECKS) $(CHECKS)

checks-ready: setup $(call venv_ready,$(PYTHON_VERSIONS)) $(SQLALCHEMY_VENVS:%=%/.installed) wheel \
	build/pyturso-tests/.extracted

# pyturso's own lint: its pinned ruff with its configuration (ruff.toml), over all of our Python.
lint: setup
	$(RUFF) check .

# Each gate at every version in TYPECHECK_PYTHON_VERSIONS, run by that version's interpreter and packages, at once
# (each version has its own mypy cache).
typecheck: setup $(TYPECHECK_PYTHON_VERSIONS:%=.venvs/%/.linked)
	$(RUN_CHECKS) $(TYPECHECK_PYTHON_VERSIONS:%=typecheck-%)

typecheck-%: setup .venvs/%/.linked
	.venvs/$*/bin/python -m mypy --cache-dir .mypy_cache/$* --python-version $* turso/lib_sync_aio.py \
		turso/sqlalchemy_sync_aio.py turso/background_sync_aio.py turso/_sync_aio
	.venvs/$*/bin/python -m mypy --cache-dir .mypy_cache/$* --python-version $* tests testkit examples benchmarks scripts
	$(PYRIGHT) --pythonpath .venvs/$*/bin/python --pythonversion $*
	.venvs/$*/bin/python -m mypy.stubtest turso.lib_sync_aio --allowlist stubtest-allowlist.txt

# The whole suite on every version in PYTHON_VERSIONS, JOBS at once; one Python only: `make unit-3.13` (or `make unit
# PYTHON_VERSIONS=3.13`). Each run has its own pytest temporary folder, build/pytest/X.Y.
unit: setup $(call venv_ready,$(PYTHON_VERSIONS))
	$(RUN_CHECKS) $(PYTHON_VERSIONS:%=unit-%)

unit-%: setup .venvs/%/.linked
	@mkdir -p build/pytest
	.venvs/$*/bin/python -m pytest -p no:cacheprovider --basetemp=build/pytest/$*

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

# The examples sync with TURSO_DATABASE_URL (and TURSO_AUTH_TOKEN). Unset, `make demo` and `make demo-sqlalchemy` run
# them through scripts/dev_server.py, which starts a local tursodb --sync-server for the run and sets the variable.
WITH_REMOTE = $(if $(TURSO_DATABASE_URL),,$(PY) scripts/dev_server.py --)

demo: setup
	$(WITH_REMOTE) $(PY) examples/demo.py

# SQLAlchemy's asyncio engine on two replicas of one database (sqlite+aioturso_sync://).
demo-sqlalchemy: setup
	$(WITH_REMOTE) $(PY) examples/sqlalchemy_demo.py

# A local tursodb --sync-server for development, until Ctrl-C: on http://127.0.0.1:$(SERVER_PORT), its database kept
# in $(SERVER_DATA) across runs. Give a replica that URL, e.g. TURSO_DATABASE_URL=http://127.0.0.1:8080 for the
# examples. `make server SERVER_PORT=9000 SERVER_DATA=/tmp/remote.db` changes either.
SERVER_PORT ?= 8080
SERVER_DATA ?= build/dev-server.db
server: setup
	@mkdir -p $(dir $(SERVER_DATA))
	$(PY) scripts/dev_server.py --port $(SERVER_PORT) $(SERVER_DATA)

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
	@mkdir -p build/pytest; set -e; for venv in $(SQLALCHEMY_VENVS); do \
		echo "== $$venv: $$($$venv/bin/python -c 'import sqlalchemy; print("SQLAlchemy", sqlalchemy.__version__)')"; \
		$$venv/bin/python -m mypy --cache-dir $$venv/.mypy_cache $(SQLALCHEMY_FILES); \
		$(PYRIGHT) -p $$venv/pyrightconfig.json; \
		$$venv/bin/python -m pytest -p no:cacheprovider --basetemp=build/pytest/$$venv tests/test_sqlalchemy.py; \
	done

# The full benchmark (about 18 minutes): tables on stdout; benchmarks/results/results.json, RESULTS.md and the charts.
bench: setup
	$(PY) -m benchmarks

# A tiny run that only proves the benchmark still works (CI runs it; no timing is judged).
bench-smoke: setup
	$(PY) -m benchmarks --smoke

# A worktree of the module before our transport (build/before-039f19c, set up by its own make setup), and a record of
# the background benchmark on it in benchmarks/results/before.json. With the worktree there, `make bench` runs that
# benchmark on it route by route beside ours; without it (CI), it shows the record (benchmarks/before.py).
bench-before: setup
	$(PY) -m benchmarks.before

clean:
	rm -rf $(VENV) .venvs $(SQLALCHEMY_VENVS) .driver node_modules .mypy_cache .pytest_cache .ruff_cache build dist
	find turso -maxdepth 1 -type l -delete
