"""`make test-pyturso`: pyturso's own tests for this module, run as they are against ours.

pyturso 0.8.3's sdist holds `bindings/python/tests/test_database_sync_aio.py`, the driver's tests of
`turso.aio.sync` (bootstrap, pull, push, checkpoint, partial sync). This fetches that file, with the helpers it
imports (`utils.py`, and the package's `__init__.py`), from the sdist (downloaded and digest-checked by
pyturso_release.py; never committed) into build/pyturso-tests/pyturso_tests/, unchanged. It checks that
`turso.lib_sync_aio` resolves to this checkout's module there, then runs pytest on the file with LOCAL_SYNC_SERVER
set: each test then starts its own fresh `tursodb --sync-server` (scripts/loopback_sync_server: our tursodb, on
loopback).

Usage: python scripts/run_pyturso_tests.py --extract             # set-up: fetch, check and extract the files
       python scripts/run_pyturso_tests.py [extra pytest arguments]  # run them
"""

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pyturso_release
from pyturso_release import CHECKOUT, ReleaseError

# The folder of pyturso's Python tests inside the sdist, and the files taken from it.
SDIST_TESTS = "bindings/python/tests"
TEST_FILE = "test_database_sync_aio.py"
FILES = ("__init__.py", "utils.py", TEST_FILE)
WORK_DIR = CHECKOUT / "build" / "pyturso-tests"
# A package name of its own: the checkout, also on the dev venv's path, has a `tests` package too.
PACKAGE_DIR = WORK_DIR / "pyturso_tests"
# Kept next to the extracted files: pytest's settings for them (the sdist's own config is for all its tests).
PYTEST_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
LOCAL_SYNC_SERVER = CHECKOUT / "scripts" / "loopback_sync_server"
TURSODB = CHECKOUT / "node_modules" / "@tursodatabase" / "cli-linux-x64-gnu" / "tursodb"


def extract() -> None:
    """pyturso's test file and its helpers, fresh from the checked sdist, into PACKAGE_DIR."""
    sdist = pyturso_release.fetch_sdist()
    for name in FILES:
        pyturso_release.extract_sdist_file(sdist, f"{SDIST_TESTS}/{name}", PACKAGE_DIR)
    (WORK_DIR / "pytest.ini").write_text(PYTEST_INI)


def module_seen_from(folder: Path) -> Path:
    """Where `turso.lib_sync_aio` is imported from by the dev venv's python started in folder."""
    output = subprocess.run(
        [sys.executable, "-c", "import turso.lib_sync_aio; print(turso.lib_sync_aio.__file__)"],
        cwd=folder, capture_output=True, text=True, check=True,
    ).stdout
    return Path(output.strip()).resolve()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extract", action="store_true", help="only fetch and extract the files (the set-up step)")
    arguments, pytest_arguments = parser.parse_known_args(argv)
    if arguments.extract:
        try:
            extract()
        except ReleaseError as error:
            print(f"run_pyturso_tests: {error}", file=sys.stderr)
            return 1
        return 0
    if not all((PACKAGE_DIR / name).is_file() for name in FILES):
        print(f"run_pyturso_tests: {PACKAGE_DIR} is not set up; run `make test-pyturso`", file=sys.stderr)
        return 1
    ours = CHECKOUT / "turso" / "lib_sync_aio.py"
    seen = module_seen_from(WORK_DIR)
    if seen != ours:
        print(f"run_pyturso_tests: turso.lib_sync_aio resolves to {seen}, not to {ours}", file=sys.stderr)
        return 1
    environment = {
        **os.environ,
        "LOCAL_SYNC_SERVER": str(LOCAL_SYNC_SERVER),
        "TURSODB_BIN": os.environ.get("TURSODB_BIN", str(TURSODB)),
    }
    test_path = f"{PACKAGE_DIR.name}/{TEST_FILE}"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", test_path, *pytest_arguments]
    print(f"pyturso's {TEST_FILE} against {ours}:", flush=True)
    return subprocess.run(command, cwd=WORK_DIR, env=environment).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
